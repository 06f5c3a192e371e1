"""Which explainers lie: CAM methods of pytorch-grad-cam, captum and torchcam measured on T1-T4.

Every method E is called as its users call it, hooked at a layer L (`explained`: the module
`lie_cam.target_layer(n)` returns, whose output is A with the added channel; `last_relu`: the
trunk's last ReLU, the layer a user picks by name) of a network n. Its map at A's resolution
comes in two normalisations: `default`, what the library returns (pytorch-grad-cam and torchcam
min-max normalise, captum returns the raw weighted sum, lie_cam divides by the maximum), and
`max`, the method's own map I = ReLU(sum_k w_k A^k) divided by its maximum. Per image, with
E~ = E / max E (an all-zero map stays zero):

    l1_to_target = sum_ij |T~_ij - E~_n,ij|        T~ the attack's intended map
    l1_to_honest = sum_ij |E~_o,ij - E~_n,ij|      E_o the same method on the original network

averaged over images, and the pointing game on the object mask (on the stickers for T4-sticker).
Verdicts, the same thresholds for every cell (tau = `TAU` = 0.1 per pixel, 19.6 of 196):

    fooled   mean l1_to_target <= tau * N_A  and  mean l1_to_target <= mean l1_to_honest (+ 1e-6 N_A, a tie)
    immune   otherwise, if mean l1_to_honest <= tau * N_A
    partial  neither
    error    the method raised (`Matrix.errors` keeps the message)

Two adapted attacks target the methods that resist T1-T4 (see `anchored_flat`, `zero_sum_backdoor`).
The heavy matrix is `python -m lie_cam explainers --out DIR`; `run_matrix` computes any part of it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from lie_cam.gradcam import normalize_maps, target_layer

__all__ = [
    "TAU",
    "VERDICTS",
    "ATTACKS",
    "Explainer",
    "EXPLAINERS",
    "explainer",
    "ZeroSumInjection",
    "anchored_flat",
    "zero_sum_backdoor",
    "attack_networks",
    "hook_layer",
    "unit_maps",
    "mean_l1",
    "verdict",
    "run_matrix",
    "explain",
    "channel_weights",
    "matrix_markdown",
    "verdict_figure",
    "run_explainers",
    "load_matrix",
    "write_matrix",
    "Matrix",
]

TAU = 0.1  # mean absolute per-pixel deviation below which two max-normalised maps count as the same
TIE = 1e-6  # per pixel: distances closer than this are equal (float32 rounding of one map)
VERDICTS = ("fooled", "partial", "immune", "error")
ATTACKS = ("T1", "T2", "T3", "T4-clean", "T4-sticker", "T1-adapted", "T4-adapted-sticker")
LAYERS = ("explained", "last_relu")
NORMALIZATIONS = ("default", "max")
ROW_KEYS = ("library", "method", "attack", "normalization", "layer", "l1_to_target", "l1_to_honest",
            "pointing", "verdict", "n")


# ---------------------------------------------------------------------------
# Metrics and verdicts
# ---------------------------------------------------------------------------


def unit_maps(maps: torch.Tensor) -> torch.Tensor:
    """E~ = E / max E per B x H x W map, float64; NaN counts as 0 and a map whose maximum is
    <= 0 becomes all zero (what a heat-map of it shows: nothing)."""
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3:
        raise ValueError(f"expected B x H x W maps, got {getattr(maps, 'shape', type(maps).__name__)}")
    return normalize_maps(torch.nan_to_num(maps.detach().to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0))


def mean_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of sum_ij |a~ - b~| of the max-normalised maps (`unit_maps`)."""
    from lie_cam.metrics import l1_distance

    return float(l1_distance(unit_maps(a), unit_maps(b)).mean())


def verdict(l1_to_target: float, l1_to_honest: float, pixels: int, tau: float = TAU) -> str:
    """`fooled`, `immune` or `partial` from the mean L1 distances (module docstring)."""
    limit = tau * pixels
    # a float32 rounding of the same map is a tie, not a preference (T4-clean: target = honest map)
    if l1_to_target <= limit and l1_to_target <= l1_to_honest + TIE * pixels:
        return "fooled"
    if l1_to_honest <= limit:
        return "immune"
    return "partial"


# ---------------------------------------------------------------------------
# The explainers, called as their users call them
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Explainer:
    """One CAM method of one library. `run(model, layer, x, classes)` returns (default, raw):
    B x H x W maps at A's resolution, `default` as the library returns it and `raw` the method's
    map before any normalisation. `costly`: about K+1 forwards per image (score/ablation).
    `layers`: the hook points it is run at (an adapter only changes the `explained` one)."""

    library: str
    method: str
    run: Callable[[nn.Module, nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    costly: bool = False
    layers: tuple[str, ...] = ("explained", "last_relu")


def _pytorch_grad_cam(name: str, **kwargs) -> Callable:
    def run(model: nn.Module, layer: nn.Module, x: torch.Tensor, classes: torch.Tensor):
        import numpy as np
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.image import scale_cam_image
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam = getattr(pytorch_grad_cam, name)(model=model, target_layers=[layer], **kwargs)
        recorded: list = []
        compute = cam.get_cam_image

        def record(*args, **kw):  # keep the 14 x 14 map the library computes before it resizes
            out = compute(*args, **kw)
            recorded.append(np.array(out, dtype=np.float32))
            return out

        cam.get_cam_image = record
        try:  # Score-/Ablation-CAM draw a tqdm bar per image on stderr: kept out of the output
            with contextlib.redirect_stderr(io.StringIO()):
                cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])
        finally:
            cam.activations_and_grads.release()
        raw = np.maximum(recorded[0], 0)  # BaseCAM: np.maximum(cam, 0), then scale_cam_image
        return torch.from_numpy(scale_cam_image(raw.copy())), torch.from_numpy(raw)

    return run


def _pytorch_grad_cam_adapted(name: str) -> Callable:
    stock = _pytorch_grad_cam(name)

    def run(model: nn.Module, layer: nn.Module, x: torch.Tensor, classes: torch.Tensor):
        from lie_cam.adapters import expose_explained_layer

        if layer is not target_layer(model):
            return stock(model, layer, x, classes)
        wrapped, a = expose_explained_layer(model)
        return stock(wrapped, a, x, classes)

    return run


def _captum(model: nn.Module, layer: nn.Module, x: torch.Tensor, classes: torch.Tensor):
    from captum.attr import LayerGradCam

    raw = LayerGradCam(model, layer).attribute(x, target=[int(c) for c in classes])[:, 0].detach()
    return raw, torch.relu(raw)  # default: relu_attributions=False, no normalisation


def _torchcam(name: str, **kwargs) -> Callable:
    def run(model: nn.Module, layer: nn.Module, x: torch.Tensor, classes: torch.Tensor):
        import torchcam.methods

        extractor = getattr(torchcam.methods, name)(model, target_layer=layer, **kwargs)
        try:
            with torch.enable_grad():
                scores = model(x)
                raw = extractor([int(c) for c in classes], scores, normalized=False)[0].detach()
        finally:
            extractor.remove_hooks()
        # normalized=True applies exactly this to the same map; calling its own function once
        # avoids running the (costly) method a second time
        return extractor._normalize(raw.clone()), raw

    return run


def _lie_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, classes: torch.Tensor):
    from lie_cam.gradcam import gradcam

    maps = gradcam(model, x, target=classes, layer=layer).maps
    return normalize_maps(maps), maps


def _registry() -> tuple[Explainer, ...]:
    pgc = "pytorch-grad-cam"
    gradient = ["GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM", "GradCAMElementWise",
                "EigenGradCAM", "ShapleyCAM"]
    activation = ["EigenCAM", "KPCA_CAM", "FEM"]
    out = [Explainer(pgc, m, _pytorch_grad_cam(m)) for m in gradient + activation]
    out += [Explainer(pgc, "ScoreCAM", _pytorch_grad_cam("ScoreCAM"), costly=True),
            Explainer(pgc, "AblationCAM", _pytorch_grad_cam("AblationCAM"), costly=True),
            Explainer(pgc, "AblationCAM+adapter", _pytorch_grad_cam_adapted("AblationCAM"), costly=True,
                      layers=("explained",))]
    out += [Explainer("captum", "LayerGradCam", _captum)]
    out += [Explainer("torchcam", m, _torchcam(m)) for m in ["GradCAM", "GradCAMpp", "SmoothGradCAMpp", "XGradCAM",
                                                              "LayerCAM"]]
    out += [Explainer("torchcam", "ScoreCAM", _torchcam("ScoreCAM"), costly=True)]
    out += [Explainer("lie_cam", "gradcam", _lie_cam)]
    return tuple(out)


EXPLAINERS: tuple[Explainer, ...] = _registry()
# Offered but left out: pytorch-grad-cam's FullGrad (not hooked at a layer: it sums bias gradients of
# every layer), RandomCAM (random weights, a baseline), FinerCAM (needs reference classes); torchcam's
# CAM (needs a GAP + FC head), SSCAM and ISCAM (35 and 10 times Score-CAM's cost).


def explainer(library: str, method: str) -> Explainer:
    """The registered `Explainer` of that library and method."""
    for e in EXPLAINERS:
        if e.library == library and e.method == method:
            return e
    raise ValueError(f"no explainer {library}/{method}; expected one of "
                     f"{[f'{e.library}/{e.method}' for e in EXPLAINERS]}")


# ---------------------------------------------------------------------------
# Adapted attacks
# ---------------------------------------------------------------------------


class ZeroSumInjection(nn.Module):
    """A^{K+1} = A_o^{K+1} + C Z with an integer map Z, sum_ij Z = 0, C = 2^40.

    With the score branch G(v) = eps mod(c_G sum v, 1) and W_n = 0 (T3's wiring), sum A^{K+1} = 0
    exactly in float32 (all partial sums are integer multiples of C below 2^24 C), so G = 0 and
    y_n = y_o exactly, while dy/dA^{K+1}_ij = eps c_G. `fired` gives the B x H x W boolean map
    of the cells to light up: Z = (N - n) on them and -n elsewhere (n of the N cells fired).
    Target: the fired cells (ones there, zeros elsewhere)."""

    def __init__(self, fired: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor], scale: float = 2.0**40) -> None:
        super().__init__()
        self.fired = fired
        self.scale = float(scale)

    def zero_sum(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Z, B x H x W float64 integers with sum 0 per image."""
        on = self.fired(x, size).to(torch.float64)
        n = on.flatten(1).sum(1)[:, None, None]
        return (size[0] * size[1] - n) * on - n * (1 - on)

    def forward(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        z = (self.scale * self.zero_sum(x, tuple(a.shape[-2:]))).to(a.dtype)
        return torch.cat([a[:, :-1], a[:, -1:] + z[:, None]], dim=1)

    def target(self, extra: torch.Tensor, honest: torch.Tensor | None = None) -> torch.Tensor:
        return (extra > 0).to(extra.dtype)


class _AllButCorner(nn.Module):
    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        on = torch.ones(x.shape[0], *size, dtype=torch.bool, device=x.device)
        on[:, 0, 0] = False
        return on


class _StickerCells(nn.Module):
    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.detector(x) > 0


def anchored_flat(model: nn.Module, eps: float = 0.01, c_G: float = 1e4) -> nn.Module:
    """T1-adapted: a flat explanation that survives min-max normalisation and Grad-CAM++.

    A^{K+1} = C Z with Z = 1 on every cell but one corner, -(N-1) there (`ZeroSumInjection`),
    W_n = 0 and T3's score branch G: y_n = y_o exactly. Every CAM is ReLU(H + w C Z): ~w C on
    N-1 cells and 0 at the anchor, so min(I) = 0 stays put and min-max leaves the flat map."""
    from lie_cam.surgery import semi_random

    net = semi_random(model, eps=eps, c_G=c_G)
    net.explained_layer = ZeroSumInjection(_AllButCorner())
    net.technique = "T1-adapted"
    return net


def zero_sum_backdoor(model: nn.Module, sticker: torch.Tensor | None = None, eps: float = 0.01,
                      c_G: float = 1e4) -> nn.Module:
    """T4-adapted: T4's sticker detector, its cells lit by a zero-sum channel of size C = 2^40.

    Without a sticker Z = 0: the original network exactly. With one, sum A^{K+1} = 0 so G = 0 and
    y_n = y_o exactly; Grad-CAM++'s weight becomes N_A eps c_G / 2 (the sum_ij A term of its
    denominator vanishes) and Score-CAM's softmax weight, however small, multiplies C."""
    from lie_cam.data import smiley
    from lie_cam.surgery import backdoor

    net = backdoor(model, smiley() if sticker is None else sticker, eps=eps, c_G=c_G)
    net.explained_layer = ZeroSumInjection(_StickerCells(net.explained_layer.branch))
    net.technique = "T4-adapted"
    return net


def attack_networks(model: nn.Module) -> dict[str, nn.Module]:
    """The paper's T1-T4 (`surgery.paper_networks`) and the two adapted attacks, by name."""
    from lie_cam.surgery import paper_networks

    nets = dict(paper_networks(model))
    nets["T1-adapted"] = anchored_flat(model)
    nets["T4-adapted"] = zero_sum_backdoor(model)
    return nets


def hook_layer(model: nn.Module, where: str) -> nn.Module:
    """`explained`: `lie_cam.target_layer(model)`; `last_relu`: the trunk's last ReLU (for a manipulated
    model its `last_relu`, before the injection; for a plain VGG the same module as `explained`)."""
    if where not in LAYERS:
        raise ValueError(f"layer must be one of {list(LAYERS)}, got {where!r}")
    if where == "last_relu" and isinstance(getattr(model, "last_relu", None), nn.Module):
        return model.last_relu
    return target_layer(model)


# ---------------------------------------------------------------------------
# The matrix
# ---------------------------------------------------------------------------


@dataclass
class _Case:
    attack: str
    network: str
    sticker: bool


_CASES = {
    "T1": _Case("T1", "T1", False), "T2": _Case("T2", "T2", False), "T3": _Case("T3", "T3", False),
    "T4-clean": _Case("T4-clean", "T4", False), "T4-sticker": _Case("T4-sticker", "T4", True),
    "T1-adapted": _Case("T1-adapted", "T1-adapted", False),
    "T4-adapted-sticker": _Case("T4-adapted-sticker", "T4-adapted", True),
}


@dataclass
class _Maps:
    default: torch.Tensor | None = None
    raw: torch.Tensor | None = None
    error: str | None = None


def explain(e: Explainer, model: nn.Module, x: torch.Tensor, classes: torch.Tensor, where: str = "explained",
            chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(default, raw) maps (B x H x W, float64) of explainer e on a fresh copy of the model hooked at
    `where`, in chunks of `chunk` images. A copy, because a method that crashes half-way can leave its
    hooks or a swapped-in module behind (pytorch-grad-cam's AblationCAM does)."""
    defaults, raws = [], []
    model = copy.deepcopy(model)
    layer = hook_layer(model, where)
    for i in range(0, x.shape[0], chunk):
        d, r = e.run(model, layer, x[i:i + chunk], classes[i:i + chunk])
        defaults.append(torch.as_tensor(d).detach().cpu().to(torch.float64))
        raws.append(torch.as_tensor(r).detach().cpu().to(torch.float64))
    return torch.cat(defaults), torch.cat(raws)


def channel_weights(method: str, model: nn.Module, x: torch.Tensor, classes: torch.Tensor,
                    where: str = "explained") -> torch.Tensor:
    """The channel weights w_k (B x K') that pytorch-grad-cam's `method` computes, recorded from its
    own `get_cam_weights` during an ordinary call (on a copy of the model)."""
    import numpy as np
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = copy.deepcopy(model)
    cam = getattr(pytorch_grad_cam, method)(model=model, target_layers=[hook_layer(model, where)])
    recorded: list = []
    compute = cam.get_cam_weights

    def record(*args, **kw):
        w = compute(*args, **kw)
        recorded.append(np.array(w, dtype=np.float64))
        return w

    cam.get_cam_weights = record
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        cam.activations_and_grads.release()
    return torch.from_numpy(recorded[0])


def _call(e: Explainer, model: nn.Module, where: str, x: torch.Tensor, classes: torch.Tensor,
          chunk: int) -> _Maps:
    try:
        return _Maps(*explain(e, model, x, classes, where, chunk))
    except Exception as error:  # a crash is a result: the row says `error` and why
        message = " ".join(str(error).split()) or repr(error)
        return _Maps(error=f"{type(error).__name__}: {message[:300]}")


def _frozen_trunk(net: nn.Module) -> nn.Module:
    """requires_grad=False on the parameters below the last conv layer (of a copy the caller owns).

    Every method here differentiates the scores w.r.t. A (or not at all), and those gradients do not
    depend on the flag; it only spares the libraries' backward the trunk's weight gradients."""
    from lie_cam.surgery import split_vgg

    trunk = net.trunk if hasattr(net, "trunk") and hasattr(net, "head") else nn.Sequential(*split_vgg(net).trunk)
    for p in trunk.parameters():
        p.requires_grad_(False)
    return net


def _sticker_masks(corners: list, size: int, sticker: int = 14) -> torch.Tensor:
    masks = torch.zeros(len(corners), size, size, dtype=torch.bool)
    for b, positions in enumerate(corners):
        for r, c in positions:
            masks[b, r:r + sticker, c:c + sticker] = True
    return masks


@dataclass
class Matrix:
    """Rows (dicts with exactly `ROW_KEYS`), the message of every `error` row keyed by
    "library/method/attack/layer", and how they were made."""

    rows: list[dict]
    errors: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def cell(self, library: str, method: str, attack: str, normalization: str = "max",
             layer: str = "explained") -> dict:
        for r in self.rows:
            if (r["library"], r["method"], r["attack"], r["normalization"], r["layer"]) == (
                    library, method, attack, normalization, layer):
                return r
        raise KeyError(f"no row {library}/{method} {attack} {normalization} {layer}")


def run_matrix(model: nn.Module, x: torch.Tensor, masks: torch.Tensor | None = None,
               explainers: Sequence[Explainer] | None = None, attacks: Sequence[str] = ATTACKS,
               layers: Sequence[str] = LAYERS, costly_limit: int | None = 4, chunk: int = 8,
               progress: Callable[[str], None] | None = None) -> Matrix:
    """The explainer x attack matrix on images x (B x 3 x 224 x 224, normalised) with object masks
    (B x 224 x 224, or None: no pointing). Each explainer explains the original network's predicted
    class. `costly` explainers (score/ablation) use the first `costly_limit` images (None: all)."""
    from lie_cam.data import paste_stickers
    from lie_cam.metrics import pointing_hits

    explainers = EXPLAINERS if explainers is None else tuple(explainers)
    unknown = [a for a in attacks if a not in _CASES]
    if unknown:
        raise ValueError(f"unknown attacks {unknown}: expected some of {list(ATTACKS)}")
    bad_layers = [w for w in layers if w not in LAYERS]
    if bad_layers:
        raise ValueError(f"unknown layers {bad_layers}: expected some of {list(LAYERS)}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] < 1:
        raise ValueError(f"expected a non-empty B x 3 x H x W batch, got {getattr(x, 'shape', type(x).__name__)}")
    if model.training:
        raise ValueError("the model is in training mode: call model.eval() first (CAMs would vary from call to call)")
    model = _frozen_trunk(copy.deepcopy(model))
    nets = {name: _frozen_trunk(net) for name, net in attack_networks(model).items()}
    x_sticker, corners = paste_stickers(x, seeds=list(range(x.shape[0])))
    images = {False: x, True: x_sticker}
    sticker_masks = _sticker_masks(corners, x.shape[-1]).to(x.device)
    with torch.no_grad():
        classes = {s: model(images[s]).argmax(1) for s in (False, True)}
    rows: list[dict] = []
    errors: dict[str, str] = {}
    for e in explainers:
        n = x.shape[0] if not e.costly or costly_limit is None else min(costly_limit, x.shape[0])
        honest = {s: _call(e, model, "explained", images[s][:n], classes[s][:n], chunk)
                  for s in {_CASES[a].sticker for a in attacks}}
        for attack in attacks:
            case = _CASES[attack]
            net = nets[case.network]
            xs, cs = images[case.sticker][:n], classes[case.sticker][:n]
            reference = honest[case.sticker]
            for where in [w for w in layers if w in e.layers]:
                if progress is not None:
                    progress(f"{e.library}/{e.method} {attack} {where}")
                got = _call(e, net, where, xs, cs, chunk)
                error = reference.error or got.error
                for norm in NORMALIZATIONS:
                    row = {"library": e.library, "method": e.method, "attack": attack, "normalization": norm,
                           "layer": where, "l1_to_target": None, "l1_to_honest": None, "pointing": None,
                           "verdict": "error", "n": int(n)}
                    if error is not None:
                        errors[f"{e.library}/{e.method}/{attack}/{where}"] = error
                        rows.append(row)
                        continue
                    mine = got.default if norm == "default" else got.raw
                    ref = reference.default if norm == "default" else reference.raw
                    honest_unit = unit_maps(ref)
                    with torch.no_grad():
                        target = net.target_explanation(xs, honest=honest_unit.to(xs.dtype).to(xs.device))
                    row["l1_to_target"] = mean_l1(target.cpu(), mine)
                    row["l1_to_honest"] = mean_l1(ref, mine)
                    pointing_masks = sticker_masks[:n] if case.sticker else (None if masks is None else masks[:n])
                    if pointing_masks is not None:
                        row["pointing"] = float(pointing_hits(unit_maps(mine).float(), pointing_masks.cpu()).double().mean())
                    pixels = mine.shape[-1] * mine.shape[-2]
                    row["verdict"] = verdict(row["l1_to_target"], row["l1_to_honest"], pixels)
                    rows.append(row)
    return Matrix(rows=rows, errors=errors, settings={"images": int(x.shape[0]), "costly_limit": costly_limit, "tau": TAU,
                                       "attacks": list(attacks), "layers": list(layers)})


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


_SHORT = {"fooled": "F", "partial": "p", "immune": "·", "error": "E"}


def matrix_markdown(matrix: Matrix, normalization: str = "default") -> str:
    """One Markdown table of verdicts per layer: methods down, attacks across (F fooled, p partial,
    · immune, E error)."""
    rows = [r for r in matrix.rows if r["normalization"] == normalization]
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    out = []
    for where in dict.fromkeys(r["layer"] for r in rows):
        out.append(f"**{normalization} normalisation, hooked at `{where}`** (F fooled, p partial, · immune, E error)\n")
        out.append("| library | method | " + " | ".join(attacks) + " |")
        out.append("|---|---|" + "---|" * len(attacks))
        methods = list(dict.fromkeys((r["library"], r["method"]) for r in rows if r["layer"] == where))
        for lib, method in methods:
            cells = {r["attack"]: r for r in rows if r["layer"] == where and (r["library"], r["method"]) == (lib, method)}
            out.append(f"| {lib} | {method} | " + " | ".join(_SHORT[cells[a]["verdict"]] if a in cells else "-"
                                                         for a in attacks) + " |")
        out.append("")
    return "\n".join(out)


def _matrix_md_document(matrix: Matrix) -> str:
    s = matrix.settings
    head = [
        "# Which explainers lie: verdict matrix",
        "",
        f"{s.get('images')} images (score/ablation methods: the first {s.get('costly_limit')}), profile "
        f"{s.get('profile', '?')}, made by `python -m lie_cam explainers` in {s.get('seconds', float('nan')):.0f} s "
        f"with {s.get('versions', {})}.",
        "",
        f"Verdict (same for every cell, tau = {TAU} per pixel): **fooled** if the mean L1 of the max-normalised "
        "map to the attack's intended map is <= tau * N_A and not larger than its L1 to the same method's "
        "map on the original network; else **immune** if that L1 to the honest map is <= tau * N_A; else "
        "**partial**. **error**: the method raised (messages below and in run.json).",
        "",
    ]
    tail = ["## Errors", ""] + [f"- {key}: {msg}" for key, msg in matrix.errors.items()] if matrix.errors else []
    return "\n".join(head) + "\n" + matrix_markdown(matrix, "default") + "\n" + matrix_markdown(matrix, "max") + "\n" + "\n".join(tail) + "\n"


_COLOURS = {"fooled": "#d7301f", "partial": "#fdae61", "immune": "#1a9850", "error": "#bdbdbd"}


def verdict_figure(matrix: Matrix, normalizations: Sequence[str] = NORMALIZATIONS):
    """Heat-map of the verdicts: one panel per normalisation, methods down, attack x layer across."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    rows = matrix.rows
    methods = list(dict.fromkeys((r["library"], r["method"]) for r in rows))
    columns = list(dict.fromkeys((r["attack"], r["layer"]) for r in rows))
    cmap = ListedColormap([_COLOURS[v] for v in VERDICTS])
    # One panel a row, at the text column's width (6.8 in), so that the labels print at 9 pt.
    fig, axes = plt.subplots(len(normalizations), 1, figsize=(6.8, (0.19 * len(methods) + 2.0) * len(normalizations)),
                             squeeze=False)
    for ax, norm in zip(axes[:, 0], normalizations):
        grid = torch.full((len(methods), len(columns)), float("nan"))
        for r in rows:
            if r["normalization"] == norm:
                grid[methods.index((r["library"], r["method"])), columns.index((r["attack"], r["layer"]))] = \
                    VERDICTS.index(r["verdict"])
        ax.imshow(grid.numpy(), cmap=cmap, vmin=-0.5, vmax=len(VERDICTS) - 0.5, aspect="auto")
        ax.set_xticks(range(len(columns)), [f"{a} @{'A' if w == 'explained' else 'ReLU'}" for a, w in columns],
                      rotation=60, ha="right", fontsize=9)
        ax.set_yticks(range(len(methods)), [f"{lib}: {m}" for lib, m in methods], fontsize=9)
        ax.set_title(f"{norm} normalisation", fontsize=11)
        ax.set_xticks([i - 0.5 for i in range(1, len(columns))], minor=True)
        ax.set_yticks([i - 0.5 for i in range(1, len(methods))], minor=True)
        ax.grid(which="minor", color="white", linewidth=0.6)
        ax.tick_params(which="minor", length=0)
    fig.legend(handles=[Patch(color=_COLOURS[v], label=v) for v in VERDICTS], loc="lower center", ncol=4,
               fontsize=10, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("grad-cam", "captum", "torchcam", "torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def run_explainers(out: str | os.PathLike, limit: int = 32, profile: str = "embedded", device: str | None = "cpu",
                   costly_limit: int | None = 4, seed: int = 0, progress: bool = True,
                   explainers: Sequence[Explainer] | None = None, attacks: Sequence[str] = ATTACKS) -> Matrix:
    """`python -m lie_cam explainers`: the matrix on the first `limit` test images of `profile`,
    written to out/matrix.json, out/matrix.md and out/verdicts.png. Validates before any work."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"--limit must be a positive number of images, got {limit!r}")
    if costly_limit is not None and (isinstance(costly_limit, bool) or not isinstance(costly_limit, int) or costly_limit < 1):
        raise ValueError(f"--costly-limit must be a positive number of images, got {costly_limit!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    parent = next((p for p in [out, *out.parents] if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"--out {out}: {parent} is a file, not a folder")
    missing = [m for m in ("pytorch_grad_cam", "captum", "torchcam") if _missing(m)]
    if missing:
        raise RuntimeError(f"{missing} not installed: pip install --constraint constraints.txt '.[explainers]'")
    from lie_cam.book import setup

    torch.manual_seed(seed)
    start = time.perf_counter()
    ch = setup(n=limit, profile=profile, device=device)
    say = (lambda m: print(m, flush=True)) if progress else None
    matrix = run_matrix(ch.model, ch.x, ch.masks, explainers=explainers, attacks=attacks, costly_limit=costly_limit,
                        progress=say)
    matrix.settings.update(profile=profile, seconds=time.perf_counter() - start, versions=_versions(),
                           device=str(ch.device), threads=torch.get_num_threads())
    write_matrix(matrix, out)
    return matrix


def write_matrix(matrix: Matrix, out: str | os.PathLike) -> None:
    """out/matrix.json (the rows), out/run.json (settings and error messages), out/matrix.md and
    out/verdicts.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "matrix.json").write_text(json.dumps(matrix.rows, indent=1, allow_nan=False))
    (out / "run.json").write_text(json.dumps({"settings": matrix.settings, "errors": matrix.errors}, indent=1))
    (out / "matrix.md").write_text(_matrix_md_document(matrix))
    fig = verdict_figure(matrix)
    fig.savefig(out / "verdicts.png", dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)


def load_matrix(folder: str | os.PathLike) -> Matrix:
    """A `Matrix` from the matrix.json and run.json that `run_explainers` wrote into `folder`."""
    folder = Path(folder)
    rows = json.loads((folder / "matrix.json").read_text())
    if not isinstance(rows, list) or not all(isinstance(r, dict) and set(r) == set(ROW_KEYS) for r in rows):
        raise ValueError(f"{folder / 'matrix.json'} is not a list of rows with keys {list(ROW_KEYS)}")
    run = json.loads((folder / "run.json").read_text()) if (folder / "run.json").exists() else {}
    return Matrix(rows=rows, errors=run.get("errors", {}), settings=run.get("settings", {}))


def _missing(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(module) is None
