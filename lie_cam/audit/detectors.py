"""Detectors for manipulated models: each takes a model (module or weights file) and returns a
score, higher meaning more suspicious. `DETECTORS` lists them with what they need.

    a  architecture_score   number of deviations of the modules / state_dict from torchvision's VGG
                            layout (keys, shapes, module types). No data, no pass.
    b  magnitude_score      log10 max over parameter tensors t of max(max|t| / median|t|,
                            max|bias| / rms(weight of that layer)). No data, no pass.
    c  activation_score     log10 max_k P_k / median_k P_k, P_k = max over clean images and positions
                            of A^k (Grad-CAM's layer). Clean images, 1 forward.
    d  alpha_dominance      mean over clean images of max_k |alpha_k| / sum_k |alpha_k|.
                            Clean images, 1 forward + 1 backward (the Grad-CAM).
    e  randomization_score  Adebayo et al. (2018): mean |cosine similarity| of the pre-ReLU Grad-CAM
                            maps of the model and of a copy with its logits layer re-initialised
                            (a faithful explanation must change). Clean images, 2 Grad-CAMs.
    f  gradient_check       median relative gap between the autograd directional derivative g.v
                            (v = g/|g|) of y_c and the central finite difference
                            (y_c(x + h v) - y_c(x - h v)) / 2h. Clean images, 1 backward + 3 forwards.
    f2 ig_completeness      median |sum IG - (y_c(x) - y_c(0))| / |y_c(x) - y_c(0)| for integrated gradients
                            with `steps` midpoint steps from the zero baseline. Clean images, `steps` backwards.
    g  occlusion_disagreement  mean |I~_cam - I~_occ| between max-normalised Grad-CAM (pooled to the
                            occlusion grid) and occlusion map (drop of y_c when a cell is set to 0, the
                            mean colour). Clean images, 1 Grad-CAM + grid^2 forwards.
    t  trigger_score        log10 of the largest ratio (map change / prediction change) of a stimulus of one
                            channel of A over the 90th percentile of the model's channels
                            (`lie_cam.audit.trigger`). Clean images (2), 1 Grad-CAM + K head passes.
Model files load with safetensors or `torch.load(weights_only=True)` only (`lie_cam.models.load_model_file`).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from lie_cam.gradcam import gradcam, non_finite_weights, normalize_maps, target_layer
from lie_cam.audit.trigger import trigger_score
from lie_cam.models import ModelLike, as_model, read_state_dict, vgg_state_dict_problems

__all__ = [
    "Detector",
    "DETECTORS",
    "score_all",
    "architecture_problems",
    "architecture_score",
    "magnitude_score",
    "activation_score",
    "alpha_dominance",
    "randomization_score",
    "gradient_check",
    "ig_completeness",
    "occlusion_disagreement",
    "auroc",
    "tpr_at_fpr",
    "occlusion_map",
    "randomised_logits",
]


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------


def _finite_model(model: ModelLike) -> nn.Module:
    """as_model(model), refusing weights with NaN or infinity (a detector would score them silently)."""
    model = as_model(model)
    bad = non_finite_weights(model)
    if bad:
        raise ValueError(f"the model's weights are not finite: {', '.join(bad[:5])}"
                         f"{f' (and {len(bad) - 5} more)' if len(bad) > 5 else ''} hold NaN or infinite values; "
                         "the detectors expect finite weights")
    return model


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _count(name: str, value: int, largest: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1 or (largest and value > largest):
        raise ValueError(f"{name} must be an integer in [1, {largest if largest else 'inf'}], got {value!r}")
    return int(value)


def _scores(name: str, values: list[float] | torch.Tensor) -> torch.Tensor:
    """Detector scores as a non-empty 1-D float64 tensor of finite values."""
    try:
        scores = torch.as_tensor(values, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{name} must be a sequence of numbers (detector scores), got {type(values).__name__}") from error
    if scores.numel() == 0:
        raise ValueError(f"{name} must hold at least one score")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f"{name} scores must be finite, got {scores[~torch.isfinite(scores)].tolist()[:5]} among them")
    return scores


# ---------------------------------------------------------------------------
# (a) architecture
# ---------------------------------------------------------------------------


def architecture_problems(model: ModelLike) -> list[str]:
    """Everything in `model` that torchvision's VGG would not have: a module of another class or
    with extra submodules, parameters or buffers, or a state_dict whose keys/shapes are not VGG's."""
    if isinstance(model, (str, Path)):
        return vgg_state_dict_problems(read_state_dict(model))
    model = as_model(model)  # TypeError naming what is expected for anything but a module or a path
    from lie_cam.compat import import_torchvision

    import_torchvision()
    from torchvision.models.vgg import VGG

    problems = []
    if type(model) is not VGG:
        problems.append(f"the model is a {type(model).__module__}.{type(model).__name__}, not torchvision's VGG")
    allowed = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Linear, nn.Dropout, nn.Sequential, VGG)
    for name, module in model.named_modules():
        if type(module) not in allowed:
            problems.append(f"module {name or '(root)'} is a {type(module).__name__}")
    for name, _ in model.named_buffers():
        problems.append(f"unexpected buffer {name}")
    problems += vgg_state_dict_problems(model.state_dict())
    return problems


def architecture_score(model: ModelLike) -> float:
    """(a) The number of `architecture_problems`: 0 for torchvision's layout."""
    return float(len(architecture_problems(model)))


# ---------------------------------------------------------------------------
# (b) weight statistics
# ---------------------------------------------------------------------------


def magnitude_score(model: ModelLike) -> float:
    """(b) log10 of the largest outlier ratio among the parameters: max|t| / median|t| per tensor,
    and max|b| / rms(W) for each layer's bias b against its weight W. Huge folded constants
    (c_W = 100 among weights of 0.01; a bias of -4.9e5) stand out; ordinary training gives ratios of 10-100."""
    model = _finite_model(model)
    ratios = []
    modules = [m for m in model.modules() if isinstance(getattr(m, "weight", None), torch.Tensor)]
    for m in modules:
        w = m.weight.detach().double().abs().flatten()
        if w.numel() > 1:
            ratios.append(w.max() / w.median().clamp_min(1e-12))
        b = getattr(m, "bias", None)
        if isinstance(b, torch.Tensor) and w.numel() > 1:
            ratios.append(b.detach().double().abs().max() / w.pow(2).mean().sqrt().clamp_min(1e-12))
    for p in model.parameters():
        if p.dim() == 0:
            ratios.append(p.detach().double().abs())
    if not ratios:
        raise ValueError(f"the model ({type(model).__name__}) has no weights to score: expected a network with layers "
                         "that have a weight tensor of more than one value (Conv2d, Linear)")
    return math.log10(max(float(r) for r in ratios))


# ---------------------------------------------------------------------------
# Data-based detectors
# ---------------------------------------------------------------------------


def _activations(model: nn.Module, x: torch.Tensor, layer: nn.Module | None = None) -> torch.Tensor:
    """A, the output of `layer` (default `target_layer(model)`), on x."""
    store: dict = {}
    layer = target_layer(model) if layer is None else layer
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("A", o.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return store["A"]


def _check_clean(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point() or not len(x):
        raise ValueError(f"clean images must be a float B x 3 x H x W tensor (normalised, B >= 1), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("clean images must be finite: x holds NaN or infinite values")


def activation_score(model: ModelLike, x: torch.Tensor, layer: nn.Module | None = None) -> float:
    """(c) log10 max_k P_k / median_k P_k with P_k = max over the clean images x and positions of A^k
    (median over channels that fire at all); A the output of `layer` (default `target_layer(model)`)."""
    _check_clean(x)
    model = _finite_model(model).eval()
    a = _activations(model, x, layer).double()
    peaks = a.amax(dim=(0, 2, 3))
    alive = peaks[peaks > 0]
    if alive.numel() == 0:
        return 0.0
    return math.log10(float(alive.max() / alive.median()))


def alpha_dominance(model: ModelLike, x: torch.Tensor, layer: nn.Module | None = None) -> float:
    """(d) mean over clean images of max_k |alpha_k| / sum_k |alpha_k| (1/K for equal alphas, 1 when
    one channel carries all of Grad-CAM's weight); Grad-CAM at `layer` (default `target_layer(model)`)."""
    _check_clean(x)
    alpha = gradcam(_finite_model(model).eval(), x, layer=layer).alpha.double().abs()
    return float((alpha.amax(1) / alpha.sum(1).clamp_min(1e-300)).mean())


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1).double(), b.flatten(1).double()
    norm = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(norm > 0, (a * b).sum(1) / norm.clamp_min(1e-300), torch.zeros_like(norm))


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError("the model has no nn.Linear layer to randomise")
    return linears[-1]


def _raw_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None,
             layer: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_k alpha_k A^k before the ReLU, classes), A the output of `layer` (default `target_layer(model)`)."""
    result = gradcam(model, x, target=target, layer=layer)
    return torch.einsum("bk,bkhw->bhw", result.alpha.double(), _activations(model, x, layer).double()), result.classes


@contextlib.contextmanager
def randomised_logits(model: nn.Module, seed: int = 0) -> Iterator[nn.Module]:
    """Within the block, `model`'s last nn.Linear (the logits layer) computes with weights re-initialised by
    PyTorch's default uniform init U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from `seed`: a forward hook
    replaces its output by F.linear(input, W', b'), so nothing is copied and no parameter of `model`
    changes (the hook is removed on leaving). Yields the model."""
    logits = _last_linear(model)
    generator = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(logits.in_features)
    # drawn in float32 in this order (weight, then bias), as the study's copies were
    weight = ((torch.rand(logits.weight.shape, generator=generator) * 2 - 1) * bound).to(logits.weight)
    bias = (((torch.rand(logits.bias.shape, generator=generator) * 2 - 1) * bound).to(logits.bias)
            if logits.bias is not None else None)
    handle = logits.register_forward_hook(lambda m, inputs, output: F.linear(inputs[0], weight, bias))
    try:
        yield model
    finally:
        handle.remove()


def randomization_score(model: ModelLike, x: torch.Tensor, seed: int = 0, layer: nn.Module | None = None) -> float:
    """(e) Adebayo's model-parameter randomisation test, first step of the cascade: mean absolute cosine
    similarity between the pre-ReLU Grad-CAM maps sum_k alpha_k A^k of the model and of a copy whose logits
    layer is re-initialised (seeded, PyTorch's default uniform init). Absolute, as Adebayo et al.'s absolute
    rank correlation, so a map that only flips sign counts as unchanged. An explanation that does not depend
    on the weights it explains stays the same (score near 1)."""
    _check_clean(x)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    model = _finite_model(model).eval()
    honest, classes = _raw_cam(model, x, layer=layer)
    with randomised_logits(model, seed):
        random, _ = _raw_cam(model, x, classes, layer)
    return float(_cosine(honest, random).abs().mean())


def _class_scores(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return model(x).gather(1, classes[:, None])[:, 0]


def gradient_check(model: ModelLike, x: torch.Tensor, h: float = 1e-2) -> float:
    """(f) median over clean images of |g.v - FD| / max(|g.v|, |FD|) with g = dy_c/dx by autograd,
    v = g/|g| and FD = (y_c(x + h v) - y_c(x - h v)) / 2h (y_c the top class; a step of h in the
    input's norm moves each of its 150,528 values by ~h/400, so float32 suffices). A ReLU
    network is piecewise linear: the two agree unless a kink lies within h. Gradients made up by
    autograd (mod's derivative 1 where the function jumps by c_G c_F) do not survive the difference."""
    _check_clean(x)
    h = _positive("h", h)
    model = _finite_model(model).eval()
    x = x.clone().requires_grad_(True)
    with torch.no_grad():
        classes = model(x).argmax(1)
    (g,) = torch.autograd.grad(_class_scores(model, x, classes).sum(), x)
    g = g.flatten(1)
    norm = g.norm(dim=1)
    v = (g / norm.clamp_min(1e-300)[:, None]).view_as(x)
    with torch.no_grad():
        fd = (_class_scores(model, x + h * v, classes) - _class_scores(model, x - h * v, classes)) / (2 * h)
    norm = norm.double()
    fd = fd.double()
    gap = (norm - fd).abs() / torch.maximum(norm, fd.abs()).clamp_min(1e-300)
    return float(gap.median())


def ig_completeness(model: ModelLike, x: torch.Tensor, steps: int = 8) -> float:
    """(f2) integrated gradients (Sundararajan et al. 2017) from the zero baseline with `steps` midpoint
    steps: IG = x * mean_s dy_c/dx(s x); completeness says sum IG = y_c(x) - y_c(0). Returns the median
    relative violation over clean images."""
    _check_clean(x)
    steps = _count("steps", steps)
    model = _finite_model(model).eval()
    with torch.no_grad():
        classes = model(x).argmax(1)
        gap = _class_scores(model, x, classes) - _class_scores(model, torch.zeros_like(x), classes)
    total = torch.zeros_like(x)
    for s in range(steps):
        point = (x * ((s + 0.5) / steps)).requires_grad_(True)
        (g,) = torch.autograd.grad(_class_scores(model, point, classes).sum(), point)
        total += g
    ig = (x * total / steps).flatten(1).double().sum(1)
    gap = gap.double()
    return float(((ig - gap).abs() / gap.abs().clamp_min(1e-12)).median())


def occlusion_map(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, grid: int = 4) -> torch.Tensor:
    """B x grid x grid drop of y_c when each cell of a grid x grid partition is set to 0 (forward passes only);
    grid in [1, min(H, W)]."""
    _check_clean(x)
    grid = _count("grid", grid, min(x.shape[-2:]))
    side = x.shape[-1] // grid
    with torch.no_grad():
        base = _class_scores(model, x, classes)
        drops = torch.empty(x.shape[0], grid * grid, dtype=torch.float64)
        for b in range(x.shape[0]):
            batch = x[b : b + 1].repeat(grid * grid, 1, 1, 1)
            for cell in range(grid * grid):
                r, c = divmod(cell, grid)
                batch[cell, :, r * side : (r + 1) * side, c * side : (c + 1) * side] = 0
            drops[b] = (base[b] - _class_scores(model, batch, classes[b].expand(grid * grid))).double()
    return drops.view(x.shape[0], grid, grid)


def occlusion_disagreement(model: ModelLike, x: torch.Tensor, grid: int = 4, layer: nn.Module | None = None) -> float:
    """(g) mean over clean images and grid cells of |I~_cam - I~_occ|: Grad-CAM average-pooled to the
    occlusion grid and ReLU(occlusion drop), each divided by its maximum (what a user sees; a correlation
    would ignore T1's flat offset and see only the honest residue under it)."""
    _check_clean(x)
    grid = _count("grid", grid, min(x.shape[-2:]))
    model = _finite_model(model).eval()
    result = gradcam(model, x, layer=layer)
    cam = normalize_maps(F.adaptive_avg_pool2d(result.maps[:, None].double(), grid)[:, 0])
    occ = normalize_maps(occlusion_map(model, x, result.classes, grid).clamp_min(0))
    return float((cam - occ).abs().mean())


# ---------------------------------------------------------------------------
# Registry and ROC statistics
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Detector:
    """A detector: its function (model[, clean images]) -> score, and what it costs."""

    key: str
    name: str
    function: Callable[..., float]
    needs_clean_data: bool
    passes: int  # forward + backward passes per clean image (0: reads the weights only)
    idea: str


DETECTORS: tuple[Detector, ...] = (
    Detector("a", "architecture", architecture_score, False, 0, "modules and state_dict vs torchvision's VGG layout"),
    Detector("b", "weight magnitude", magnitude_score, False, 0, "outlying weights and biases"),
    Detector("c", "activation range", activation_score, True, 1, "one channel of A far above the others"),
    Detector("d", "alpha dominance", alpha_dominance, True, 2, "one alpha_k carries Grad-CAM"),
    Detector("e", "randomisation test", randomization_score, True, 6, "map survives a random logits layer"),
    Detector("f", "gradient vs finite differences", gradient_check, True, 4, "autograd disagrees with the function"),
    Detector("f2", "IG completeness", ig_completeness, True, 18, "attributions do not add up to the score"),
    Detector("g", "Grad-CAM vs occlusion", occlusion_disagreement, True, 19, "Grad-CAM disagrees with a forward-only map"),
    Detector("t", "trigger search", trigger_score, True, 3, "a stimulus of A moves the map, not the scores"),
)


def auroc(clean: list[float] | torch.Tensor, attacked: list[float] | torch.Tensor) -> float:
    """P(score of an attacked model > score of a clean one), ties counting 1/2 (Mann-Whitney).
    Both lists non-empty and finite (a NaN compares false with everything and would count as a loss)."""
    c, a = _scores("clean", clean), _scores("attacked", attacked)
    greater = (a[:, None] > c[None]).double().mean()
    ties = (a[:, None] == c[None]).double().mean()
    return float(greater + 0.5 * ties)


def tpr_at_fpr(clean: list[float] | torch.Tensor, attacked: list[float] | torch.Tensor, fpr: float = 0.01) -> float:
    """Fraction of attacked scores above the threshold that flags at most `fpr` of the clean ones
    (with fewer than 1/fpr clean models: above the largest clean score); fpr in [0, 1], 1 flags everything."""
    if isinstance(fpr, bool) or not isinstance(fpr, numbers.Real) or not 0 <= fpr <= 1:
        raise ValueError(f"fpr must be in [0, 1] (the largest fraction of clean models flagged), got {fpr!r}")
    c, a = _scores("clean", clean), _scores("attacked", attacked)
    allowed = int(math.floor(fpr * c.numel()))
    if allowed >= c.numel():
        return 1.0
    threshold = c.sort(descending=True).values[allowed]
    return float((a > threshold).double().mean())


def score_all(model: ModelLike, x: torch.Tensor, detectors: tuple[Detector, ...] = DETECTORS) -> dict[str, float]:
    """Every detector's score for one model on the clean images x."""
    if isinstance(detectors, Detector) or not all(isinstance(d, Detector) for d in detectors):
        raise TypeError("detectors must be a sequence of Detector entries (e.g. a selection of DETECTORS)")
    return {d.key: float(d.function(model, x) if d.needs_clean_data else d.function(model)) for d in detectors}
