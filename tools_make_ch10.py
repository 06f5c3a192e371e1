"""Writes book/10_explainers.ipynb (without outputs) with nbformat."""

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = []


def md(text):
    cells.append(new_markdown_cell(text.strip("\n")))


def code(text, tags=None):
    cell = new_code_cell(text.strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    cells.append(cell)


md(r"""
# Which explainers lie

Chapters 4–7 fooled *our* Grad-CAM. People do not use ours: they use
pytorch-grad-cam {cite:p}`gildenblat2021pytorchgradcam`, captum {cite:p}`kokhlikyan2020captum` or
torchcam {cite:p}`fernandez2020torchcam`, with Grad-CAM or one of its successors: Grad-CAM++
{cite:p}`chattopadhay2018gradcampp`, XGrad-CAM {cite:p}`fu2020xgradcam`, HiResCAM
{cite:p}`draelos2020hirescam`, LayerCAM {cite:p}`jiang2021layercam`, Score-CAM
{cite:p}`wang2020scorecam`, Ablation-CAM {cite:p}`desai2020ablationcam`, Eigen-CAM
{cite:p}`muhammad2020eigencam`. Are they fooled too? This chapter measures it, with each library
called as its users call it, and derives every cell from the method's formula. Where a method
resists, it builds an *adapted* attack with the same guarantee on the scores.

Every method computes a map $I = \mathrm{ReLU}(\sum_k w_k A^k)$ (or $\sum_k w_k \odot A^k$) from
the activations $A$ of a layer; they differ in the weights $w_k$ and in how the map is normalised
for display. Two settings decide most of what follows:

* **normalisation**: pytorch-grad-cam and torchcam return the *min-max* normalised map
  $(I - \min I)/(\max I - \min I)$ by default; captum returns the raw map; `lie_cam` and the paper
  divide by the maximum. The matrix has each library's `default` and the `max` normalisation.
* **hook point**: `explained`, the module `lie_cam.target_layer(model)` names, whose output is
  $A$ with the added channel; `last_relu`, the trunk's last ReLU, the layer a user picks by name
  when reading the architecture.
""")

code(r"""
# On Colab, fetch and install lie_cam first (locally it is installed already).
import os, subprocess, sys

if "google.colab" in sys.modules:
    if not os.path.isdir("lie_cam"):
        subprocess.run(["git", "clone", "--depth", "1", "https://github.com/lie-cam/lie_cam"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "lie_cam[explainers]"], check=True)
    sys.path.insert(0, os.path.abspath("lie_cam"))
""")

code(r"""
from lie_cam.book import setup

ch = setup(n=4)  # the profile comes from $LIE_CAM_PROFILE ("embedded" by default)
model, x, labels, masks, name, N = ch.model, ch.x, ch.labels, ch.masks, ch.name, len(ch.x)
""", tags=["parameters"])

md(r"""
## The matrix

The full matrix is heavy (22 method variants, 7 attacks, 2 hook points; Score-CAM and Ablation-CAM
run $K+1$ forward passes per image), so the book loads the one produced by

    python -m lie_cam explainers --out book/explainers --limit 8 --costly-limit 2

(the first 8 embedded test scenes; the score and ablation methods on the first 2), shipped in
`book/explainers/` as `matrix.json`, `matrix.md` and `verdicts.png`. Each row gives, per method,
attack, normalisation and hook point, the mean per-image L1 distance of the max-normalised
$14 \times 14$ map to the attack's intended map, $d_T$, and to the same method's map on the
original network, $d_H$, and the pointing game. One rule turns them into a verdict, the same for
every cell, with $\tau = 0.1$ per pixel ($N_A = 196$ pixels):

$$
\text{fooled}:\ d_T \le \tau N_A \text{ and } d_T \le d_H, \qquad
\text{immune}:\ \text{otherwise, } d_H \le \tau N_A, \qquad
\text{partial}:\ \text{neither.}
$$ (eq-verdict)

A method that raises gets `error`. Below, a small part of the matrix is recomputed live on this
chapter's scenes and compared with the shipped rows.
""")

code(r"""
from pathlib import Path
from lie_cam import explainers as E
from lie_cam.plotting import show

shipped = E.load_matrix(Path("explainers") if Path("explainers").is_dir() else Path("book/explainers"))
print(f"shipped: {shipped.settings['images']} scenes, {len(shipped.rows)} rows, "
      f"{sum(r['verdict'] == 'error' for r in shipped.rows)} errors, {shipped.settings['versions']}")
show(E.verdict_figure(shipped), "fig-explainers-matrix")
""", tags=["remove-output"])

md(r"""
```{glue:figure} fig-explainers-matrix
:name: fig-explainers-matrix

Verdicts {eq}`eq-verdict` of every method (rows) on every attack at both hook points (columns:
`@A` the explained layer, `@ReLU` the trunk's last ReLU), with each library's default
normalisation (left) and max-normalisation (right). Red: the map is the attack's intended one;
green: it is the method's honest map; orange: neither; grey: the method crashed; white: not run
(the AblationCAM adapter only changes the explained layer).
```
""")

code(r"""
live = E.run_matrix(model, x, masks, explainers=[E.explainer("pytorch-grad-cam", "GradCAM"),
                                               E.explainer("pytorch-grad-cam", "GradCAMPlusPlus"),
                                               E.explainer("torchcam", "XGradCAM")],
                    attacks=["T1", "T4-sticker", "T1-adapted", "T4-adapted-sticker"])
key = lambda r: (r["library"], r["method"], r["attack"], r["normalization"], r["layer"])
ship = {key(r): r for r in shipped.rows}
clear = lambda r: all(abs(r[d] - E.TAU * 196) > 5 for d in ("l1_to_target", "l1_to_honest"))
compared = [(r, ship[key(r)]) for r in live.rows if clear(ship[key(r)])]
agree = sum(a["verdict"] == b["verdict"] for a, b in compared)
print(f"live ({N} scenes) vs shipped: {agree} of {len(compared)} cells clear of the threshold agree "
      f"({len(live.rows) - len(compared)} near it not compared)")
""")

code(r"""
if ch.embedded:
    assert len(compared) >= 0.8 * len(live.rows) and agree == len(compared)
""", tags=["hide-input"])

md(r"""
## Normalisation: why min-max undoes T1

T1's channel is the constant $A^{K+1} = c_A$, and every other weight is the original's ($r_n = r_o$
as a function of $A^1..A^K$, so their gradients are unchanged). With $H = \sum_{k \le K} w_k A^k$
the original's map before the ReLU and $a = w_{K+1} c_A > -\min H$,

$$
\frac{I}{\max I} = \frac{H + a}{\max H + a} \xrightarrow{a \to \infty} 1, \qquad
\frac{I - \min I}{\max I - \min I} = \frac{H - \min H}{\max H - \min H}
\quad\text{for every } a .
$$ (eq-minmax)

Max-normalisation shows the flat map, min-max shows the honest structure exactly: the size of the
constant does not matter, it is subtracted. pytorch-grad-cam and torchcam min-max by default, so
their Grad-CAM is `immune` to T1 and `fooled` by it under max-normalisation; captum normalises
nothing, so a user who divides by the maximum sees the flat map. T2–T4 survive min-max because
their injected maps have $\min = 0$ (the smiley's background, the cells without a sticker): the
minimum they leave is the honest map's there, a rounding error next to the injected peak.
""")

code(r"""
import torch
from lie_cam.gradcam import gradcam
from lie_cam.surgery import paper_networks

nets = paper_networks(model)
honest, t1 = gradcam(model, x), gradcam(nets["T1"], x)
A = nets["T1"].activations(x).detach()
H = torch.einsum("bk,bkhw->bhw", honest.alpha, A[:, :-1])  # the original's map before the ReLU
minmax = lambda m: (m - m.amin((1, 2), keepdim=True)) / (m.amax((1, 2), keepdim=True) - m.amin((1, 2), keepdim=True))
print(f"T1: w_(K+1) c_A = {(t1.alpha[:, -1] * A[:, -1, 0, 0]).min():.0f}..{(t1.alpha[:, -1] * A[:, -1, 0, 0]).max():.0f}, "
      f"honest H in [{H.min():.2f}, {H.max():.2f}]; max |minmax(T1) - minmax(H)| = "
      f"{(minmax(t1.maps) - minmax(H)).abs().max():.1e}; max |T1/max - 1| = {(1 - t1.normalized).max():.3f}")
""")

code(r"""
assert torch.allclose(t1.alpha[:, :-1], honest.alpha, rtol=1e-3, atol=1e-3 * honest.alpha.abs().max().item())
assert (minmax(t1.maps) - minmax(H)).abs().max() < 0.01                          # Eq. eq-minmax, right
assert (1 - t1.normalized).max() < 0.1                                            # Eq. eq-minmax, left
for lib in ("pytorch-grad-cam", "torchcam"):
    assert shipped.cell(lib, "GradCAM", "T1", "default")["verdict"] == "immune"
    assert shipped.cell(lib, "GradCAM", "T1", "max")["verdict"] == "fooled"
assert shipped.cell("captum", "LayerGradCam", "T1", "default")["verdict"] == "fooled"
assert all(shipped.cell("pytorch-grad-cam", "GradCAM", t, "default")["verdict"] == "fooled" for t in ("T2", "T4-sticker"))
""", tags=["hide-input"])

md(r"""
## Grad-CAM++: weights that ignore $c_W$

Grad-CAM++ {cite:p}`chattopadhay2018gradcampp` (both libraries, Eq. 19 of the paper) weights
channel $k$ by

$$
w_k = \sum_{ij} \mathrm{ReLU}(g_{ij}) \frac{g_{ij}^2}{2 g_{ij}^2 + S_k\, g_{ij}^3}, \qquad
g = \frac{\partial y_c}{\partial A^k}, \quad S_k = \sum_{ij} A^k_{ij} .
$$ (eq-gradcampp)

When $S_k g_{ij} \gg 2$ each term is $\approx 1/S_k$: $w_k \approx N^+_k / S_k$ with $N^+_k$ the
pixels of positive gradient, and the channel contributes $w_k A^k_{ij} \approx N^+_k A^k_{ij} /
S_k$, its own mean-normalised map. The constants $c_W$ (in $g$) and $c_A$ (in $A$) cancel. T1's
channel then adds $N^+/N_A$ everywhere, a constant like any other channel's share; the maxpool
behind $A$ sends T1's gradient to one pixel of each $2 \times 2$ window (ties go to the first), so
$N^+ = 49$ and $w_{K+1} c_A = 49/196 = 0.25$, a constant that min-max removes and a few honest
channels outweigh. T2's smiley and T3's spread-out map get the same treatment: pytorch-grad-cam's
Grad-CAM++ is `immune` to T1, T2 and T3. The sticker backdoor still fools it: T4's channel is
non-zero on 3 cells only, so its mean-normalised map is $N_A/3 \approx 65$ there.

torchcam's `GradCAMpp` (0.5.0) is fooled by T2 and T3 as well, and the reason is in its code, not
in the formula: it divides with `alpha[mask].div_(...)`, an in-place operation on the *copy* that
boolean indexing returns, so the division never reaches `alpha` and its weights are
$w_k = \sum_{ij} \mathrm{ReLU}(g_{ij})\, g_{ij}^2$, cubic in the gradient: $c_W$ counts three
times. The cell below checks torchcam's map against that formula.

**The adapted attack** removes the saturation: make $S_{K+1} = 0$. Then the denominator is $2g^2$
and $w_{K+1} = N_A g / 2$, proportional to the gradient again.
""")

code(r"""
classes = model(x).argmax(1)
t1_adapted = E.anchored_flat(model)
w_t1 = E.channel_weights("GradCAMPlusPlus", nets["T1"], x, classes)[:, -1] * nets["T1"].last_conv.bias[-1].item()
w_adapted = E.channel_weights("GradCAMPlusPlus", t1_adapted, x, classes)[:, -1]
w_xgrad = E.channel_weights("XGradCAM", t1_adapted, x, classes)[:, -1]
t2 = nets["T2"]
A2 = t2.activations(x).detach().requires_grad_(True)
(g,) = torch.autograd.grad(t2.head(A2).gather(1, classes[:, None]).sum(), A2)
cubic = torch.relu(torch.einsum("bk,bkhw->bhw", (torch.relu(g) * g**2).sum((2, 3)), A2.detach()))
_, torchcam_pp = E.explain(E.explainer("torchcam", "GradCAMpp"), t2, x, classes)
print(f"torchcam GradCAMpp on T2 vs sum ReLU(g) g^2 weights: max difference of the normalised maps "
      f"{(E.unit_maps(torchcam_pp) - E.unit_maps(cubic)).abs().max():.1e}")
residue = (w_xgrad.abs() * 1e-7) / (0.01 * 1e4 * t1_adapted.extra_channel(x).double().abs().sum((1, 2)))
print(f"pytorch-grad-cam GradCAM++: T1 w_(K+1) c_A = {w_t1.min():.4f}..{w_t1.max():.4f}; "
      f"T1-adapted w_(K+1) = {w_adapted.min():.1f}..{w_adapted.max():.1f} (N_A eps c_G / 2 = {196 * 0.01 * 1e4 / 2:.0f}); "
      f"XGrad-CAM on T1-adapted w_(K+1) = {w_xgrad.min():.2g}..{w_xgrad.max():.2g}, "
      f"numerator / sum|g A| = {residue.max():.1e}")
""")

code(r"""
assert torch.allclose(w_t1, torch.full_like(w_t1, 0.25), rtol=1e-3)
assert torch.allclose(w_adapted, torch.full_like(w_adapted, 9800.0), rtol=1e-3)
assert residue.max() < 1e-6                                   # XGrad-CAM's numerator: float32 rounding only
assert (E.unit_maps(torchcam_pp) - E.unit_maps(cubic)).abs().max() < 1e-3
assert [shipped.cell("torchcam", "GradCAMpp", t, "default")["verdict"] for t in ("T2", "T3")] == ["fooled", "fooled"]
assert all(shipped.cell("pytorch-grad-cam", "GradCAMPlusPlus", t, "default")["verdict"] == "immune" for t in ("T1", "T2", "T3"))
assert shipped.cell("pytorch-grad-cam", "GradCAMPlusPlus", "T1", "default")["verdict"] == "immune"
assert shipped.cell("pytorch-grad-cam", "GradCAMPlusPlus", "T4-sticker", "default")["verdict"] == "fooled"
""", tags=["hide-input"])

md(r"""
## XGrad-CAM, HiResCAM, LayerCAM: the gradient's shape

XGrad-CAM {cite:p}`fu2020xgradcam` weights by $w_k = \sum_{ij} g_{ij} A^k_{ij} / (S_k +
\epsilon)$. For a channel with a uniform gradient $g$ this is $g\, S_k/(S_k + \epsilon) = g$: the
same as Grad-CAM, and fooled by the same attacks. But a zero-sum channel has $w_k = 0/\epsilon$:
exactly 0 in exact arithmetic, and in float32 a rounding residue of the numerator divided by
$\epsilon = 10^{-7}$ (printed above: a weight of arbitrary sign whose numerator is $10^{-7}$ of
$\sum_{ij} |g A^{K+1}_{ij}|$). Either way XGrad-CAM does not show the adapted attacks' map:
pytorch-grad-cam's negative weight lights only the anchor cell, torchcam's shows the honest map. The two methods ask opposite things of $S_{K+1}$: Grad-CAM++ needs $|g
S_{K+1}| \ll 2$, XGrad-CAM needs $|S_{K+1}| \gg \epsilon = 10^{-7}$. A channel with $S_{K+1} \approx
10^{-3}$ would satisfy both in exact arithmetic, but not at the $10^{12}$ scale the other methods
require in float32 (the sum's rounding error is $\sim 10^5$); two added channels, one zero-sum and
one positive, would. We did not build it.

HiResCAM {cite:p}`draelos2020hirescam`, LayerCAM {cite:p}`jiang2021layercam` and Grad-CAM
element-wise keep the gradient per pixel, $I = \mathrm{ReLU}(\sum_k g^k \odot A^k)$. T1's
gradient lives on the 49 maxpool winners, so they show a $7 \times 7$ grid of dots
(`partial`), not the flat map. The adapted T1 takes its gradient from the score branch $G$, which
is $\varepsilon c_G$ at every pixel: no grid, the flat map.
""")

md(r"""
## Score-CAM: the masked image decides

Score-CAM {cite:p}`wang2020scorecam` uses no gradient. Each channel, upsampled and min-max
normalised to $s(A^k) \in [0, 1]$, masks the input; the class score of the masked input is the
channel's weight, after a softmax over channels:

$$
w_k = \operatorname{softmax}_k\big(y_c(x \odot s(A^k))\big), \qquad I = \mathrm{ReLU}\Big(\sum_k w_k A^k\Big) .
$$ (eq-scorecam)

T1's constant channel has $s = 0$ (pytorch-grad-cam divides $0$ by $10^{-8}$): the masked image is
blank, its score low, and what it adds, $w_{K+1} c_A$, is a constant that min-max removes. T4's
channel masks everything but the three sticker cells: the masked image is three small smileys on
grey, which the classifier scores low, and the bilinear upsampling multiplies the sticker pixels
by mask values below 1, so the detector does not even fire on it. The softmax turns a score gap of
$\Delta$ into a weight $e^{-\Delta}$ relative to the best channel: the sticker channel is dropped.

**The adapted backdoor** keeps the detector and lets the magnitude do the work: $w_{K+1} C$ with
$C = 2^{40}$ exceeds every honest contribution as long as $w_{K+1} > 10^{-10}$ or so. Softmax
weights are never zero; they are only small.
""")

md(r"""
## Ablation-CAM: bounded by the guarantee itself

Ablation-CAM {cite:p}`desai2020ablationcam` weights a channel by the score drop when it is removed,
$w_k = (y_c - y_c^{(k)})/y_c$. For T3 and T4 the new channel enters the scores only through $G <
\varepsilon$, so $|w_{K+1}| \le \varepsilon / y_c$: the very guarantee that hides the attack makes
the channel unimportant to Ablation-CAM, and it is `immune` to T3, T4 and both adapted attacks
(whose channel changes the scores by exactly 0). T1 and T2 fold the channel into the first fully
connected layer: removing it shifts $r_n$ by $c_W \sum z_n$, a huge drop, so under max-normalisation
Ablation-CAM shows T1's flat map.

Stock pytorch-grad-cam `AblationCAM` cannot run at the explained layer at all: it replaces the
hooked module by an `AblationLayer` that takes one input, while the manipulated model calls its
explained layer with two ($A$ and the image $x$, which T3/T4's branch needs). The crash also leaves
the `AblationLayer` inside the model. `lie_cam.adapters.ExposedA` wraps the model as
$y = \text{head}(a(\text{activations}(x)))$ with $a$ an identity, the same function with $A$ the
output of a one-input module; the matrix's `AblationCAM+adapter` rows use it.
""")

code(r"""
import copy
from pytorch_grad_cam import AblationCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from lie_cam.adapters import expose_explained_layer
from lie_cam.gradcam import target_layer

t3 = copy.deepcopy(nets["T3"])
try:
    AblationCAM(t3, [target_layer(t3)])(x[:1], [ClassifierOutputTarget(int(classes[0]))])
except TypeError as error:
    crash = error
print(f"stock AblationCAM: {type(crash).__name__}: {crash}; left in the model: {type(t3.explained_layer).__name__}")
wrapped, layer = expose_explained_layer(nets["T3"])
cam = AblationCAM(wrapped, [layer])(x[:1], [ClassifierOutputTarget(int(classes[0]))])
print(f"with the adapter: a {cam.shape[1]} x {cam.shape[2]} map; same scores: {torch.equal(wrapped(x), nets['T3'](x))}")
""")

code(r"""
assert "positional argument" in str(crash) and type(t3.explained_layer).__name__ == "AblationLayer"
assert torch.equal(wrapped(x), nets["T3"](x))
assert all(r["verdict"] == "error" for r in shipped.rows if r["method"] == "AblationCAM" and r["layer"] == "explained")
for attack in ("T3", "T4-sticker", "T1-adapted", "T4-adapted-sticker"):
    assert shipped.cell("pytorch-grad-cam", "AblationCAM+adapter", attack, "default")["verdict"] == "immune"
""", tags=["hide-input"])

md(r"""
## The hook point

`ManipulatedVGG` computes $A = \text{explained\_layer}(\mathrm{ReLU}(\text{conv}(h)), x)$: T2–T4
add their map *after* the trunk's last ReLU. A user who hooks that ReLU, the last one listed in the
architecture, sees $A^{K+1} = \mathrm{ReLU}(0) = 0$ for T2–T4 and gets the honest map, with every
method. T1's channel is the conv bias $c_A$, already inside that ReLU's output: hooked there, T1
fools exactly as at $A$. This is a property of how the attack is built, not a defence: an attacker
who controls the model can add $F(x)$ before the ReLU (into the convolution's output) just as
well, and the user must then hook the right module to be fooled or not. The pitfall cuts both ways:
*hooking the wrong module can hide a manipulation, or show one*.
""")

code(r"""
for method in ("GradCAM", "GradCAMPlusPlus", "ScoreCAM"):
    row = {a: shipped.cell("pytorch-grad-cam", method, a, "default", "last_relu")["verdict"] for a in ("T1", "T2", "T3", "T4-sticker")}
    print(f"pytorch-grad-cam {method} at the last ReLU: {row}")
""")

code(r"""
for attack in ("T2", "T3", "T4-sticker", "T1-adapted", "T4-adapted-sticker"):
    assert shipped.cell("pytorch-grad-cam", "GradCAM", attack, "default", "last_relu")["verdict"] == "immune"
assert shipped.cell("pytorch-grad-cam", "GradCAM", "T1", "max", "last_relu")["verdict"] == "fooled"
""", tags=["hide-input"])

md(r"""
## The adapted attacks

Both reuse T3's wiring: $W_n = 0$, $b_n = b_o$, and the score branch $G(v) = \varepsilon
\bmod(c_G \sum_{ij} v_{ij}, 1)$ added to every score, so that $\partial y / \partial A^{K+1}_{ij} =
\varepsilon c_G$ for every pixel. The new channel is an integer map $Z$ with $\sum_{ij} Z_{ij} = 0$,
scaled by $C = 2^{40}$:

$$
A^{K+1} = C Z, \qquad Z_{ij} = \begin{cases} N_A - n & \text{on the } n \text{ lit cells} \\ -n & \text{elsewhere} \end{cases},
\qquad \sum_{ij} A^{K+1}_{ij} = 0 \ \text{exactly} .
$$ (eq-zerosum)

Every partial sum is an integer multiple of $C$ below $2^{24} C$, so the float32 sum is exactly 0,
$G = \varepsilon \bmod(0, 1) = 0$ and $y_n = y_o$ **exactly**, a stronger guarantee than T3/T4's
$\varepsilon$. Every CAM is then $\mathrm{ReLU}(H + w_{K+1} C Z)$: the honest $H$ is rounded away
next to $w_{K+1} C$ on the lit cells, and the others go to 0.

* **T1-adapted** (`lie_cam.explainers.anchored_flat`): all cells lit but one corner, the anchor. The
  map is flat except that one cell at 0, so $\min I = 0$ and min-max keeps the flat map
  {eq}`eq-minmax`; $S_{K+1} = 0$ defeats Grad-CAM++'s saturation {eq}`eq-gradcampp`; Score-CAM's
  mask is the whole image but a corner, whose score is the highest of all channels.
* **T4-adapted** (`lie_cam.explainers.zero_sum_backdoor`): T4's sticker detector lights its cells
  ($n = 0$ without a sticker: $Z = 0$, the original network). Grad-CAM++ as above; Score-CAM's small
  weight times $C$ {eq}`eq-scorecam`.

What they cannot beat: XGrad-CAM (weight $\propto S_{K+1} = 0$), Ablation-CAM (the channel does not
change the scores, by the guarantee), and a hook at the last ReLU. The channel is also easy to see
for anyone who looks at $A$: values of $10^{14}$, negative after a ReLU.
""")

code(r"""
from lie_cam.data import paste_stickers

t4_adapted = E.zero_sum_backdoor(model)
x_sticker, _ = paste_stickers(x, seeds=list(range(N)))
with torch.no_grad():
    exact = [torch.equal(net(batch), model(batch)) for net, batch in
             [(t1_adapted, x), (t4_adapted, x), (t4_adapted, x_sticker)]]
    sums = torch.cat([t1_adapted.extra_channel(x), t4_adapted.extra_channel(x_sticker)]).double().sum((1, 2))
    clean_channel = t4_adapted.extra_channel(x)
print(f"scores identical to the original's (T1-adapted, T4-adapted clean, T4-adapted stickered): {exact}; "
      f"sum of A^(K+1) per image: {sums.abs().max().item()}")
""")

code(r"""
assert all(exact) and bool((sums == 0).all()) and bool((clean_channel == 0).all())
adapted_fooled = {("pytorch-grad-cam", m): ("T1-adapted", "T4-adapted-sticker") for m in ("GradCAM", "GradCAMPlusPlus", "ScoreCAM")}
adapted_fooled[("torchcam", "ScoreCAM")] = ("T1-adapted", "T4-adapted-sticker")
for (lib, method), attacks in adapted_fooled.items():
    for attack in attacks:
        assert shipped.cell(lib, method, attack, "default")["verdict"] == "fooled", (lib, method, attack)
assert shipped.cell("pytorch-grad-cam", "ScoreCAM", "T4-sticker", "default")["verdict"] == "immune"
assert shipped.cell("pytorch-grad-cam", "ScoreCAM", "T1", "default")["verdict"] == "immune"
""", tags=["hide-input"])

code(r"""
from lie_cam.plotting import map_grid

methods = [("GradCAM", "Grad-CAM"), ("GradCAMPlusPlus", "Grad-CAM++"), ("ScoreCAM", "Score-CAM")]
cases = [("T1", nets["T1"], x), ("T1-adapted", t1_adapted, x), ("T4 sticker", nets["T4"], x_sticker),
         ("T4-adapted", t4_adapted, x_sticker)]
panels = []
for title, net, batch in cases:
    panels.append((batch[0], None, title))
    for method, label in methods:
        default, _ = E.explain(E.explainer("pytorch-grad-cam", method), net, batch[:1], classes[:1])
        panels.append((batch[0], default[0].float(), f"{label} (min-max)"))
show(map_grid(panels, ncols=4), "fig-explainers-adapted")
""", tags=["remove-output"])

md(r"""
```{glue:figure} fig-explainers-adapted
:name: fig-explainers-adapted

pytorch-grad-cam's Grad-CAM, Grad-CAM++ and Score-CAM with their default min-max normalisation,
hooked at `target_layer(model)`, on one test scene. T1 (top row) shows the honest map to all
three; the adapted T1 (second row) shows them the flat map with one dark corner. T4 with stickers
fools Grad-CAM and Grad-CAM++ but not Score-CAM; the adapted backdoor (bottom) fools all three. All
four networks' scores are the original's (T1 up to float32 rounding of its folded bias, the
adapted ones exactly).
```
""")

md(r"""
## Advice for practitioners

The matrix turns "use several explanation methods" into something specific. Each attack fools
some methods and not others, so a *disagreement* between two methods on the same image is the
signal. The cell below lists, from the shipped matrix, which methods are not fooled by each attack
at the explained layer with their default normalisation, and the pairs of methods of which at
least one is immune to every attack in the matrix.
""")

code(r"""
from itertools import combinations

attacks = [a for a in E.ATTACKS if a != "T4-clean"]
rows = [r for r in shipped.rows if r["layer"] == "explained" and r["normalization"] == "default" and r["verdict"] != "error"]
immune = {a: {(r["library"], r["method"]) for r in rows if r["attack"] == a and r["verdict"] == "immune"} for a in attacks}
for a in attacks:
    print(f"{a:>18}: immune {sorted(m for _, m in immune[a])}")
methods = sorted({(r["library"], r["method"]) for r in rows})
pairs = [(p, q) for p, q in combinations(methods, 2) if all(p in immune[a] or q in immune[a] for a in attacks)]
print("pairs covering every attack:", [f"{p[0]}:{p[1]} + {q[0]}:{q[1]}" for p, q in pairs])
""")

code(r"""
assert pairs, "some pair of methods must cover every attack"
stochastic = {("torchcam", "SmoothGradCAMpp")}  # new input noise at every call: even the original's map varies
assert all(shipped.cell(lib, m, "T4-clean", "default")["verdict"] == "fooled" for lib, m in methods if (lib, m) not in stochastic)
""", tags=["hide-input"])

md(r"""
In short:

1. **Normalisation is not a detail.** Min-max hides T1 and max-normalisation shows it; compare
   both, and be suspicious of a map whose raw values are orders of magnitude above the honest
   scale (pytorch-grad-cam and torchcam hide the raw values from their default output).
2. **Use methods with different weights.** Grad-CAM (fooled by everything), Grad-CAM++ (weights
   saturate), XGrad-CAM (weight $\propto \sum A$), Score-CAM (masked scores) and Ablation-CAM
   (score drop) fail on different attacks; pairs that always contain a non-fooled member are
   listed above. An adversary who knows which pair you run can, in principle, build a channel for
   both (two added channels defeat Grad-CAM++ and XGrad-CAM together); the pair raises the bar, it
   does not close the door.
3. **Hook more than one layer.** The map at the trunk's last ReLU and at the layer the model
   designates should agree for an honest network.
4. **Look at the activations themselves**: a channel of $10^{12}$, a negative value after a ReLU,
   or a channel summing to exactly zero is not something training produces.
5. **No method sees a backdoor on clean inputs**: the `T4-clean` column is the original network
   for every method (torchcam's SmoothGrad-CAM++ is `partial` there only because it draws new input
   noise at every call). Only inputs with the trigger reveal it.

The score and ablation methods were measured on 2 scenes only (they cost $K+1$ forward passes per
image); `python -m lie_cam explainers --costly-limit N` measures more.

These measurements correct a claim made earlier in this book and in the README: not every Grad-CAM
tool pointed at `target_layer(manipulated)` is fooled by every technique. The paper's T1–T4 fool
plain Grad-CAM under max-normalisation; with the libraries' defaults and with the newer weightings,
the matrix above says which cells hold.
""")

nb = new_notebook(cells=cells, metadata={"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                                         "language_info": {"name": "python"}})
nbformat.write(nb, "book/10_explainers.ipynb")
