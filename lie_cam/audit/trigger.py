"""T4 from behaviour, trigger unknown: a search for a stimulus of Grad-CAM's layer A that moves the map
far more than the prediction, scored against the model's own channels.

Why search in A and not in the pixels. A sticker backdoor in the explanation must act through A and
alpha (Eq. 1-2): the trigger, whatever its shape, size or place, ends as a stimulus of A that Grad-CAM
amplifies while the scores barely move. T4's trigger detector is a matched filter with a margin of 1e-4
(`lie_cam.attacks.branches.StickerDetector`): it is exactly zero, gradient included, everywhere but at
the sticker itself, a password of 3 x h x w pixel values that no search in the pixels finds without
being told it (gradient descent sees a zero gradient; random patches never hit it). Its consequence in
A cannot hide: the search stimulates each channel k of A (the `layer`) in turn (the ABS idea of Liu et
al. 2019, "stimulate one neuron and watch the output", applied to the explanation),

    A' = A + v_k 1_k,        v_k = amplitude * max_ij I / |alpha_k|,

the stimulus that, by Grad-CAM's own weights, adds `amplitude` times the map's peak to every cell
(at most 1e4 times the layer's largest activation; a channel with alpha_k = 0 is not stimulated),
and recomputes Grad-CAM (alpha' from dy/dA at A', for the clean image's class) and the scores y':

    map change        m_k = TV(I / sum I, I' / sum I')   in [0, 1]   (total variation of the maps as
                                                                      distributions over cells)
    prediction change p_k = |y'_c - y_c|_2 / |y_c|_2   with y_c = y - mean_c y, the scores centred
                            over classes (what the softmax sees; the raw score for one output)
    ratio             r_k = m_k / max(p_k, FLOOR)

The whole channel is stimulated, not one cell, because alpha_k is the mean of dy/dA^k over the cells:
to first order an honest network changes y_c by N_A alpha_k v_k, exactly what Grad-CAM's weights claim,
whereas at a single cell the local gradient may be far from the mean (a border cell an FC head ignores)
and clean channels would look like liars. T3/T4's score branch G adds the same value to every logit
(0 <= G < eps) while dG/dA^{K+1} = eps c_G, so its channel moves the map and the centred scores not at
all. The score is self-relative,

    score = log10( max_k r_k / quantile_q(r_k) ),   q = REFERENCE_QUANTILE over the model's channels,

so a clean model scores low whatever its width, depth or scale (its channels are alike), and a
backdoored one high, whichever trigger it waits for (its channel is alone).

The evidence for a report: the cell where the best stimulus moved the map most, and an input patch
over that cell's receptive field optimised (`steps` signed-gradient steps on A^k_ij from a `seed`ed
random start, pixels in [0, 1]) to show what in the image would drive that channel. For a
matched-filter trigger the gradient is zero and the patch stays at its start (`patch_gain` = 0): the
search says where the lie lives, not the password.

Cost: one forward and one Grad-CAM of the `images` images, K evaluations per image of the part of the
model after A (batched: the trunk once per `chunk` channels, the head on the whole chunk), then
`steps` gradients through the whole model for the patch.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from lie_cam.anatomy import input_spec
from lie_cam.gradcam import check_finite, gradcam, non_finite_weights, target_layer

__all__ = ["TriggerSearch", "trigger_search", "trigger_score", "FLOOR", "REFERENCE_QUANTILE", "THRESHOLD"]

FLOOR = 1e-4  # the least prediction change a ratio divides by (float32 rounding of the scores is ~1e-7)
REFERENCE_QUANTILE = 0.9  # the model's own channels: the 90th percentile of their ratios is the reference
# The score above which the search flags a model: the best channel 100x the reference. Set from clean models
# only (`python -m lie_cam trigger-study`: the highest of 22 clean networks, trained and untrained, VGG and
# ResNet, was 0.92; the real brain-tumour VGG-16 below it), a decade above them; no trigger was looked at.
THRESHOLD = 2.0


@dataclass
class TriggerSearch:
    """What `trigger_search` found.

    score:             log10(max_k r_k / quantile_0.9(r_k)), higher = more suspicious
    channel:           the channel k of A whose stimulus has the largest ratio r_k
    cell:              (i, j), the cell of A where that stimulus moved the map most
    map_change:        its map change m_k (total variation, in [0, 1])
    prediction_change: its prediction change p_k (relative change of the centred scores)
    patch:             3 x s x s pixel values in [0, 1]: the input patch optimised over that cell
    location:          (row, col) of the patch's top-left corner in the input
    patch_gain:        (A^k_ij with the patch - A^k_ij without it) / v: 0 when no gradient reaches it
    image:             index in x of the image the patch was optimised on
    ratios, map_changes, prediction_changes: per channel (K values)
    clean_map, stimulated_map: H x W Grad-CAM of that image, without and with the best stimulus
    amplitude:         v_k, the stimulus added to every cell of the best channel
    """

    score: float
    channel: int
    cell: tuple[int, int]
    map_change: float
    prediction_change: float
    patch: torch.Tensor
    location: tuple[int, int]
    patch_gain: float
    image: int
    amplitude: float
    ratios: torch.Tensor = field(repr=False)
    map_changes: torch.Tensor = field(repr=False)
    prediction_changes: torch.Tensor = field(repr=False)
    clean_map: torch.Tensor = field(repr=False)
    stimulated_map: torch.Tensor = field(repr=False)

    @property
    def flagged(self) -> bool:
        """score > THRESHOLD."""
        return self.score > THRESHOLD

    def summary(self) -> dict:
        """The scalar evidence, JSON-ready."""
        return {"score": self.score, "flagged": self.flagged, "channel": self.channel, "cell": list(self.cell),
                "map_change": self.map_change, "prediction_change": self.prediction_change,
                "location": list(self.location), "patch_side": int(self.patch.shape[-1]),
                "patch_gain": self.patch_gain, "image": self.image, "amplitude": self.amplitude}


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------


def _integer(name: str, value: object, lowest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lowest:
        raise ValueError(f"{name} must be an integer >= {lowest}, got {value!r}")
    return int(value)


def _check_arguments(model: object, x: object, layer: object, seed: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a CNN in eval mode), got {type(model).__name__}")
    if model.training:
        raise ValueError(f"model ({type(model).__name__}) is in training mode: call model.eval() first "
                         "(dropout would make every score of the search random)")
    bad = non_finite_weights(model)
    if bad:
        raise ValueError(f"the model's weights are not finite: {', '.join(bad[:5])} hold NaN or infinite values; "
                         "the trigger search expects finite weights")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point() or not len(x):
        raise ValueError("x must be a float B x 3 x H x W tensor of normalised images (B >= 1), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    check_finite(x)
    if layer is not None and not isinstance(layer, nn.Module):
        raise TypeError(f"layer must be None or the nn.Module whose output is Grad-CAM's A, got {type(layer).__name__}")
    _integer("seed", seed, 0)
    return target_layer(model) if layer is None else layer


# ---------------------------------------------------------------------------
# The model after A, on a batch of stimulated activations
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _replaced_output(layer: nn.Module, replacement: torch.Tensor | None, store: dict) -> Iterator[None]:
    """Run the model without autograd below `layer`; `layer`'s output is stored (store["A"]) and, when
    `replacement` is given, replaced by it (a leaf that requires grad, store["leaf"]), so autograd records
    the part after A alone. The replacement may hold more images than the input (the part after A runs
    on all of them)."""

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise TypeError("the layer must output a B x K x H x W tensor (Grad-CAM's A), got "
                            f"{type(output).__name__}")
        store["A"] = output.detach().clone()
        if replacement is None:
            return None
        torch.set_grad_enabled(True)
        store["leaf"] = replacement.detach().to(output.dtype).requires_grad_(True)
        return store["leaf"].clone()

    previous = torch.is_grad_enabled()
    handle = layer.register_forward_hook(hook)
    try:
        torch.set_grad_enabled(False)
        yield
    finally:
        handle.remove()
        torch.set_grad_enabled(previous)


def _run_after(model: nn.Module, layer: nn.Module, x_one: torch.Tensor, stimulated: torch.Tensor,
               classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, Grad-CAM maps) of `model` with A replaced by the batch `stimulated` (N x K x H x W),
    the maps for `classes` (N), in float64."""
    store: dict = {}
    with _replaced_output(layer, stimulated, store):
        logits = model(x_one)
        if "leaf" not in store:
            raise ValueError(f"the layer {type(layer).__name__} did not run in the model's forward: expected one of "
                             "the model's modules (the one whose output is Grad-CAM's A)")
        if logits.shape[0] != stimulated.shape[0]:
            raise ValueError(f"the part of the model after the layer does not keep the batch of A ({stimulated.shape[0]}"
                             f" stimulated activations gave {logits.shape[0]} score rows): name a layer whose output "
                             "alone decides the scores")
        (grad,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), store["leaf"])
    alpha = grad.double().mean(dim=(2, 3))
    maps = torch.relu(torch.einsum("nk,nkhw->nhw", alpha, stimulated.double()))
    return logits.detach().double(), maps


def _distribution(maps: torch.Tensor) -> torch.Tensor:
    """Maps as distributions over cells (I / sum I; uniform where I is all zero)."""
    flat = maps.flatten(1)
    total = flat.sum(1, keepdim=True)
    uniform = torch.full_like(flat, 1.0 / flat.shape[1])
    return torch.where(total > 0, flat / torch.where(total > 0, total, torch.ones_like(total)), uniform)


def _centred(logits: torch.Tensor) -> torch.Tensor:
    return logits - logits.mean(1, keepdim=True) if logits.shape[1] > 1 else logits


# ---------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------


def _stimulate(model: nn.Module, layer: nn.Module, x: torch.Tensor, a: torch.Tensor, clean: torch.Tensor,
               logits: torch.Tensor, classes: torch.Tensor, v: torch.Tensor, chunk: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Map and prediction changes, B x K, of A + v_bk 1_k for every image b and channel k (v: B x K)."""
    batch, channels = a.shape[:2]
    before = _distribution(clean.double())
    centred = _centred(logits.double())
    m = torch.zeros(batch, channels, dtype=torch.float64)
    p = torch.zeros_like(m)
    for b in range(batch):
        for start in range(0, channels, chunk):
            ks = torch.arange(start, min(start + chunk, channels))
            stimulated = a[b : b + 1].repeat(len(ks), 1, 1, 1)
            stimulated[torch.arange(len(ks)), ks] += v[b, ks].to(a.dtype)[:, None, None]
            y, maps = _run_after(model, layer, x[b : b + 1], stimulated, classes[b].expand(len(ks)))
            m[b, ks] = 0.5 * (_distribution(maps) - before[b]).abs().sum(1)
            p[b, ks] = (_centred(y) - centred[b]).norm(dim=1) / centred[b].norm().clamp_min(1e-12)
    return m, p


def _optimise_patch(model: nn.Module, layer: nn.Module, x: torch.Tensor, channel: int, cell: tuple[int, int],
                    grid: tuple[int, int], steps: int, v: float, generator: torch.Generator
                    ) -> tuple[torch.Tensor, tuple[int, int], float]:
    """A patch over the cell's receptive field (twice the network's stride on a side), pixels in [0, 1],
    raised by signed gradient ascent on A^channel_cell; returns (patch, top-left corner, gain / v)."""
    side_in = x.shape[-1]
    stride = max(1, side_in // grid[1])
    s = min(side_in, x.shape[-2], 2 * stride)
    r0 = min(max(0, cell[0] * stride + stride // 2 - s // 2), x.shape[-2] - s)
    c0 = min(max(0, cell[1] * stride + stride // 2 - s // 2), side_in - s)
    spec = input_spec(model)
    mean = torch.tensor(spec.mean, dtype=x.dtype).reshape(3, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype).reshape(3, 1, 1)
    patch = torch.rand(3, s, s, generator=generator, dtype=torch.float64).to(x.dtype)

    def response(p: torch.Tensor) -> torch.Tensor:
        image = x.clone()
        image[:, :, r0 : r0 + s, c0 : c0 + s] = (p - mean) / std
        store: dict = {}
        handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("A", o))
        try:
            model(image)
        finally:
            handle.remove()
        return store["A"][0, channel, cell[0], cell[1]]

    with torch.no_grad():
        first = float(response(patch))
    for _ in range(steps):
        p = patch.clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(response(p), p, allow_unused=True)
        if g is None or not bool(g.any()):
            break
        patch = (patch + 0.25 * g.sign()).clamp(0, 1)
    with torch.no_grad():
        gain = (float(response(patch)) - first) / v
    return patch.detach(), (r0, c0), gain


def _amplitudes(a: torch.Tensor, alpha: torch.Tensor, maps: torch.Tensor, amplitude: float) -> torch.Tensor:
    """B x K stimuli v_bk = amplitude * max_ij I_b / |alpha_bk| (I_b: the clean map, or |sum_k alpha_k A^k| where
    I_b is all zero), at most 1e4 * max A; 0 where alpha_bk = 0 (up to 1e-12 of the largest |alpha_b|)."""
    peak = maps.flatten(1).amax(1)
    raw = torch.einsum("bk,bkhw->bhw", alpha, a.double()).abs().flatten(1).amax(1)
    peak = torch.where(peak > 0, peak, torch.where(raw > 0, raw, torch.ones_like(raw)))
    size = alpha.abs()
    cap = 1e4 * float(a.double().abs().max().clamp_min(1e-12))
    v = (amplitude * peak[:, None] / size.clamp_min(1e-300)).clamp_max(cap)
    return torch.where(size > 1e-12 * size.amax(1, keepdim=True), v, torch.zeros_like(v))


def trigger_search(model: nn.Module, x: torch.Tensor, layer: nn.Module | None = None, seed: int = 0,
                   images: int = 2, amplitude: float = 1.0, steps: int = 8, chunk: int = 256) -> TriggerSearch:
    """Search Grad-CAM's layer A for the channel whose stimulus moves the map far more than the prediction
    (module docstring): every channel, on the first `images` images of x, stimulus v_k = amplitude * max I /
    |alpha_k| (the map's peak, `amplitude` times, on every cell by Grad-CAM's weights); then an input patch
    over the cell the best stimulus moved most (`steps` signed-gradient steps from a random start drawn
    from `seed`). layer: the module whose output is A (default `lie_cam.gradcam.target_layer(model)`)."""
    layer = _check_arguments(model, x, layer, seed)
    images, steps, chunk = _integer("images", images, 1), _integer("steps", steps, 0), _integer("chunk", chunk, 1)
    if isinstance(amplitude, bool) or not isinstance(amplitude, numbers.Real) or not 0 < amplitude < math.inf:
        raise ValueError(f"amplitude must be a finite number > 0 (the stimulus in units of the map's peak), "
                         f"got {amplitude!r}")
    x = x[:images]
    store: dict = {}
    with _replaced_output(layer, None, store):
        model(x)
    if "A" not in store:
        raise ValueError(f"the layer {type(layer).__name__} did not run in the model's forward: expected one of the "
                         "model's modules (the one whose output is Grad-CAM's A)")
    a = store["A"]
    honest = gradcam(model, x, layer=layer)
    v = _amplitudes(a, honest.alpha.double(), honest.maps.double(), amplitude)
    m, p = _stimulate(model, layer, x, a, honest.maps, honest.logits, honest.classes, v, chunk)
    ratios = (m / p.clamp_min(FLOOR)).mean(0)
    reference = torch.quantile(ratios, REFERENCE_QUANTILE).clamp_min(1e-12)
    best = int(ratios.argmax())
    score = float(torch.log10(ratios[best].clamp_min(1e-12) / reference))
    b = int((m[:, best] / p[:, best].clamp_min(FLOOR)).argmax())
    stimulated = a[b : b + 1].clone()
    stimulated[0, best] += v[b, best].to(a.dtype)
    _, after = _run_after(model, layer, x[b : b + 1], stimulated, honest.classes[b : b + 1])
    moved = _distribution(after)[0] - _distribution(honest.maps[b : b + 1].double())[0]
    cell = divmod(int(moved.argmax()), a.shape[-1])
    generator = torch.Generator().manual_seed(int(seed))
    patch, location, gain = _optimise_patch(model, layer, x[b : b + 1], best, cell, tuple(a.shape[-2:]), steps,
                                            float(v[b, best]), generator)
    return TriggerSearch(score=score, channel=best, cell=cell, map_change=float(m[:, best].mean()),
                         prediction_change=float(p[:, best].mean()), patch=patch, location=location,
                         patch_gain=gain, image=b, amplitude=float(v[b, best]), ratios=ratios, map_changes=m.mean(0),
                         prediction_changes=p.mean(0), clean_map=honest.maps[b].double(), stimulated_map=after[0])


def trigger_score(model: nn.Module, x: torch.Tensor, layer: nn.Module | None = None, seed: int = 0) -> float:
    """The score of `trigger_search` (higher = more suspicious; above `THRESHOLD` flags), without the patch."""
    return trigger_search(model, x, layer=layer, seed=seed, steps=0).score
