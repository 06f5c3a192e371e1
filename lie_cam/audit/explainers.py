"""The third-party CAM methods (pytorch-grad-cam, captum, torchcam) as their users call them, and the verdicts.

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

The adapted attacks that target the methods resisting T1-T4 are in `lie_cam.attacks.adapted`; the
matrix itself (`python -m lie_cam explainers --out DIR`) is `lie_cam.experiments.matrix`.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from lie_cam.audit.adapters import expose_explained_layer
from lie_cam.gradcam import gradcam, normalize_maps, target_layer
from lie_cam.metrics import l1_distance

__all__ = [
    "TAU",
    "TIE",
    "VERDICTS",
    "LAYERS",
    "NORMALIZATIONS",
    "Explainer",
    "EXPLAINERS",
    "explainer",
    "hook_layer",
    "unit_maps",
    "mean_l1",
    "verdict",
    "explain",
    "channel_weights",
]

TAU = 0.1  # mean absolute per-pixel deviation below which two max-normalised maps count as the same
TIE = 1e-6  # per pixel: distances closer than this are equal (float32 rounding of one map)
VERDICTS = ("fooled", "partial", "immune", "error")
LAYERS = ("explained", "last_relu")
NORMALIZATIONS = ("default", "max")


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


def hook_layer(model: nn.Module, where: str) -> nn.Module:
    """`explained`: `lie_cam.target_layer(model)`; `last_relu`: the trunk's last ReLU (for a manipulated
    model its `last_relu`, before the injection; for a plain VGG the same module as `explained`)."""
    if where not in LAYERS:
        raise ValueError(f"layer must be one of {list(LAYERS)}, got {where!r}")
    if where == "last_relu" and isinstance(getattr(model, "last_relu", None), nn.Module):
        return model.last_relu
    return target_layer(model)


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
