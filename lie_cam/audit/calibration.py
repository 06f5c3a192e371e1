"""Self-relative checks: each judges a model against itself, not against the synthetic zoo.

The detectors of `lie_cam.audit.detectors` give raw scores whose scale depends on the network (a
real trained VGG-16 has other weight and activation statistics than the compact zoo), so thresholds
read off the zoo flag clean real models. Every check here compares a model with its own parts, or
with an invariance every faithful explanation has:

    architecture   modules outside the vocabulary of plain CNNs (torch.nn layers, torchvision's VGG /
                   ResNet, lie_cam's imported parts): code the file's author added. Threshold 0.
    weights        per Conv/Linear tensor t: o_t = log10 max|w_t| / rms(w_t) and the bias'
                   p_t = log10 max|b_t| / rms(w_t); score = max_t (o_t - median o) over the model's own
                   tensors, and the same for p. Threshold WEIGHT_DECADES.
    activations    r_L = log10 max_k P_k / median_k P_k (P_k channel k's peak on the images) at A and at
                   every other ReLU of the trunk; score = r_A - max_{L != A} r_L. Threshold ACTIVATION_DECADES.
    alpha          mean over images of max_k |alpha_k| / sum_k |alpha_k|, Grad-CAM's weights of the
                   model's own K channels. Threshold ALPHA_SHARE.
    randomisation  mean |cos| of the pre-ReLU maps of the model and of the model with a re-initialised
                   logits layer (Adebayo et al. 2018). Threshold RANDOMISATION_COSINE (unchanged to 1e-6).
    gradient       median |g.v - FD_h| / max(|g.v|, |FD_h|) (v = g / |g|) against the model's own
                   float32 noise, the disagreement |FD_h - FD_{h/2}| / |FD_h| of two finite differences.
                   Flags when above GRADIENT_GAP and GRADIENT_NOISE_FACTOR times the noise.
    trigger        `lie_cam.audit.trigger.trigger_search`: a stimulus of A that moves the Grad-CAM map far
                   more than the prediction, against the model's own channels. Its own threshold.

Each returns a `CheckResult`; `CHECKS` lists them. Higher scores are more suspicious throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from lie_cam.audit.detectors import alpha_dominance, randomization_score
from lie_cam.audit.trigger import THRESHOLD as TRIGGER_THRESHOLD
from lie_cam.audit.trigger import trigger_search
from lie_cam.gradcam import target_layer

__all__ = ["CheckResult", "Check", "CHECKS", "check_names", "WEIGHT_DECADES", "ACTIVATION_DECADES", "ALPHA_SHARE", "BIAS_DECADES",
           "RANDOMISATION_COSINE", "GRADIENT_GAP", "GRADIENT_NOISE_FACTOR", "unusual_modules",
           "weight_outliers", "activation_outlier", "gradient_consistency"]

# A Conv/Linear tensor whose largest weight lies 10x further out (relative to its own rms) than in
# the model's median tensor. Trained and randomly initialised weights are near-Gaussian or mildly heavy
# tailed: max / rms is sqrt(2 ln n) ~ 4-6 for n = 1e3..1e8 weights, up to ~45 after training (measured:
# log10 0.45-1.65 over the compact VGG/ResNet, the zoo, the tumour VGG-16 and torchvision's inits; the
# worst tensor of each of these 15 models lies at most 10^0.67 beyond its own median tensor,
# benchmarks/audit_models.py), so one decade above the model's own median is far from any of them;
# a folded constant (c_W = 100 among weights of 0.01) sits 1.5-4 decades out.
WEIGHT_DECADES = 1.0
# The explained layer's channel peaks spread 10x wider (max / median) than at any other ReLU of the
# same network on the same images. Every layer of a trained or random CNN is built the same way, so
# their spreads agree within a few tenths of a decade (measured: 0.06-1.1 per layer, A at most 10^0.32
# beyond the widest other layer over the 15 clean models); a constant channel c_A planted at A (T1, the
# hijack with larger c_A, T3's branch) stands alone.
ACTIVATION_DECADES = 1.0
# One channel outweighs all K-1 others together in Grad-CAM's sum: the map is then a picture of one
# channel. Honest networks spread alpha over many channels (measured: at most 0.087 over the 15 clean
# models, 1/K = 0.002-0.016 for their widths); the attacks put one channel's weight above 0.94. The bound needs no reference set: it is the majority of the weight.
ALPHA_SHARE = 0.5
# The map of a re-initialised logits layer is the same map to float precision (1 - |cos| < 1e-6 on
# average over the images): the explanation does not depend on the weights it explains (Adebayo et al.
# 2018's sanity check). The planted maps (T1-T3, the hijack, T1-adapted) stay identical up to rounding
# (measured 1 - |cos| <= 4e-8), while an honest map moves, if only a little: 1 - |cos| = 0.05-0.4 on the
# compact models, 2.6e-3 for the compact VGG fed un-normalised pixels (its maps then barely depend on
# the classes). An invariance, not a distance from a reference set.
RANDOMISATION_COSINE = 1 - 1e-6
# Autograd and the finite difference disagree by more than 10% of the derivative, and by more than ten
# times the disagreement of two finite differences (h, h/2) of the same model, which measures the
# model's float32 noise (it grows with depth and width) and its kinks; a gradient made up by autograd
# (T3/T4's mod branch) disagrees by ~100%. Measured: the real tumour VGG-16 disagrees by 4.3% in float32
# (2.5% even in float64: kinks within h), the compact models by 0.3%.
GRADIENT_GAP = 0.1
GRADIENT_NOISE_FACTOR = 10.0

# A bias far out (relative to its layer's rms weight) against the model's median layer. Biases scale
# with the activations they offset, so they spread wider than weights: the real tumour VGG-16 puts its
# last conv's bias 10^1.7 beyond its median layer; a folded constant (the hijack's b' = b - c_W sum z)
# sits 3-5 decades out.
BIAS_DECADES = 2.5

# Module classes of plain CNNs: everything in torch.nn, torchvision's classification models, and the
# parts lie_cam's own importers build (from_parts, load_onnx).
_PLAIN_PACKAGES = ("torch.nn.modules.", "torchvision.models.", "lie_cam.parts", "lie_cam.onnx_import",
                   "lie_cam.anatomy")
_PLAIN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass
class CheckResult:
    """One check's outcome: its score against its threshold, and what a person reads as evidence."""

    key: str
    name: str
    score: float | None
    threshold: float
    flagged: bool
    evidence: str
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"key": self.key, "name": self.name, "score": self.score, "threshold": self.threshold,
                "flagged": self.flagged, "evidence": self.evidence, "details": self.details}


@dataclass(frozen=True)
class Check:
    """A check: `function(model, x, layer) -> CheckResult`; `needs_images` False reads the weights only."""

    key: str
    name: str
    function: Callable[..., CheckResult]
    needs_images: bool
    idea: str


def check_names() -> list[str]:
    return [c.key for c in CHECKS]


# ---------------------------------------------------------------------------
# Reading the weights
# ---------------------------------------------------------------------------


def unusual_modules(model: nn.Module) -> list[str]:
    """Modules whose class is not a plain CNN layer (see `_PLAIN_PACKAGES`), and buffers other than
    batch norm's statistics: what the file's author added beyond the network's layers."""
    problems = []
    for name, module in model.named_modules():
        where = f"{type(module).__module__}."
        if not where.startswith(_PLAIN_PACKAGES):
            problems.append(f"module {name or '(root)'} is a {type(module).__module__}.{type(module).__name__}")
    for name, _ in model.named_buffers():
        if name.rsplit(".", 1)[-1] not in _PLAIN_BUFFERS:
            problems.append(f"buffer {name}")
    return problems


def architecture_check(model: nn.Module, x: torch.Tensor | None = None, layer: nn.Module | None = None) -> CheckResult:
    """Flags any module or buffer `unusual_modules` finds (threshold 0: a plain CNN has none)."""
    problems = unusual_modules(model)
    evidence = "; ".join(problems[:4]) + (f" (and {len(problems) - 4} more)" if len(problems) > 4 else "") \
        if problems else "only plain CNN layers (torch.nn, torchvision, lie_cam's importers)"
    return CheckResult("architecture", "architecture", float(len(problems)), 0.0, bool(problems), evidence,
                       {"problems": problems})


def _log_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> float:
    return math.log10(max(float(numerator), 1e-300) / max(float(denominator), 1e-300))


def weight_outliers(model: nn.Module) -> dict[str, dict[str, float]]:
    """{tensor name: {"weight": log10 max|w| / rms(w), "bias": log10 max|b| / rms(w)}} for every Conv
    and Linear layer (weights of more than one value)."""
    out: dict[str, dict[str, float]] = {}
    for name, module in model.named_modules():
        w = getattr(module, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() < 2 or w.numel() < 2:
            continue
        w = w.detach().double().flatten()
        rms = w.pow(2).mean().sqrt()
        entry = {"weight": _log_ratio(w.abs().max(), rms)}
        b = getattr(module, "bias", None)
        if isinstance(b, torch.Tensor) and b.numel() and float(b.detach().abs().max()) > 0:
            entry["bias"] = _log_ratio(b.detach().double().abs().max(), rms)
        out[name or "(root)"] = entry
    return out


def _excess(values: dict[str, float]) -> tuple[float, str]:
    """max_t (v_t - median v) and its t; (0, '') with fewer than 3 tensors to compare."""
    if len(values) < 3:
        return 0.0, ""
    median = float(torch.tensor(list(values.values()), dtype=torch.float64).median())
    name = max(values, key=values.get)
    return values[name] - median, name


def weights_check(model: nn.Module, x: torch.Tensor | None = None, layer: nn.Module | None = None) -> CheckResult:
    """The largest excess of a tensor's outlier ratio over the model's median one (`WEIGHT_DECADES`)."""
    ratios = weight_outliers(model)
    if not ratios:
        raise ValueError(f"the model ({type(model).__name__}) has no Conv or Linear weights to check")
    w_excess, w_name = _excess({k: v["weight"] for k, v in ratios.items()})
    b_excess, b_name = _excess({k: v["bias"] for k, v in ratios.items() if "bias" in v})
    # one score on the weights' scale: the bias excess counted in units of its own (wider) threshold
    b_scaled = b_excess * WEIGHT_DECADES / BIAS_DECADES
    score, name, kind, excess = (w_excess, w_name, "weight", w_excess) if w_excess >= b_scaled else \
        (b_scaled, b_name, "bias", b_excess)
    evidence = (f"{name}: its largest {kind} lies 10^{excess:.2f} times further out (relative to the layer's rms "
                f"weight) than in the model's median layer (limits 10^{WEIGHT_DECADES:g} weights, "
                f"10^{BIAS_DECADES:g} biases)")
    return CheckResult("weights", "weight magnitude", score, WEIGHT_DECADES, score > WEIGHT_DECADES, evidence,
                       {"per_tensor": ratios, "worst": name, "kind": kind, "weight_excess": w_excess,
                        "bias_excess": b_excess})


# ---------------------------------------------------------------------------
# Running the model
# ---------------------------------------------------------------------------


def _spread(a: torch.Tensor) -> float | None:
    """log10 max_k P_k / median_k P_k over channels that fire (None when none fires)."""
    peaks = a.double().amax(dim=(0, 2, 3))
    alive = peaks[peaks > 0]
    return _log_ratio(alive.max(), alive.median()) if alive.numel() else None


def activation_outlier(model: nn.Module, x: torch.Tensor, layer: nn.Module | None = None) -> tuple[float, list[float]]:
    """(r_A, [r_L for every other 4-D ReLU output of the forward]), r = `_spread`; outputs equal to A
    (a ResNet block's last ReLU is A itself) are not counted among the others."""
    layer = target_layer(model) if layer is None else layer
    outputs: list[torch.Tensor] = []
    store: dict = {}
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append(o.detach())) for m in model.modules()
             if isinstance(m, nn.ReLU) and m is not layer]
    hooks.append(layer.register_forward_hook(lambda m, i, o: store.__setitem__("A", o.detach().clone())))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    a = store["A"]
    others = [_spread(o) for o in outputs if o.dim() == 4 and not (o.shape == a.shape and torch.equal(o, a))]
    return _spread(a) or 0.0, [r for r in others if r is not None]


def activations_check(model: nn.Module, x: torch.Tensor, layer: nn.Module | None = None) -> CheckResult:
    """r_A - max of the other layers' r_L (`ACTIVATION_DECADES`)."""
    r_a, others = activation_outlier(model, x, layer)
    score = r_a - max(others) if others else 0.0
    evidence = (f"channel peaks at the explained layer spread 10^{r_a:.2f} (max / median); the other "
                f"{len(others)} ReLU layers at most 10^{max(others) if others else 0:.2f}")
    return CheckResult("activations", "activation range", score, ACTIVATION_DECADES, score > ACTIVATION_DECADES,
                       evidence, {"explained": r_a, "others": others})


def alpha_check(model: nn.Module, x: torch.Tensor, layer: nn.Module | None = None) -> CheckResult:
    """Grad-CAM's largest channel weight share (`ALPHA_SHARE`)."""
    share = alpha_dominance(model, x, layer=layer)
    evidence = f"the largest channel carries {100 * share:.1f}% of Grad-CAM's weight sum_k |alpha_k|"
    return CheckResult("alpha", "alpha dominance", share, ALPHA_SHARE, share > ALPHA_SHARE, evidence)


def randomisation_check(model: nn.Module, x: torch.Tensor, layer: nn.Module | None = None) -> CheckResult:
    """Mean |cos| of the maps before and after re-initialising the logits layer (`RANDOMISATION_COSINE`)."""
    cosine = randomization_score(model, x, seed=0, layer=layer)
    evidence = (f"re-initialising the logits layer leaves the map at 1 - |cos| = {1 - cosine:.2g} from the original "
                f"({'unchanged' if cosine > RANDOMISATION_COSINE else 'it changes, as a faithful map must'})")
    return CheckResult("randomisation", "randomisation test", cosine, RANDOMISATION_COSINE,
                       cosine > RANDOMISATION_COSINE, evidence)


def gradient_consistency(model: nn.Module, x: torch.Tensor, h: float = 1e-2) -> tuple[float, float]:
    """(median gap, median noise): gap = |g.v - FD_h| / max(|g.v|, |FD_h|), noise = |FD_h - FD_{h/2}| /
    max(|FD_h|, |FD_{h/2}|), v = g / |g| for the top class' score y_c, FD_s = (y_c(x + s v) - y_c(x - s v)) / 2s."""
    x = x.clone().requires_grad_(True)
    with torch.no_grad():
        classes = model(x).argmax(1)

    def score(z: torch.Tensor) -> torch.Tensor:
        return model(z).gather(1, classes[:, None])[:, 0]

    (g,) = torch.autograd.grad(score(x).sum(), x)
    norm = g.flatten(1).norm(dim=1)
    v = g / norm.clamp_min(1e-300).view(-1, 1, 1, 1)
    with torch.no_grad():
        fd = [((score(x + s * v) - score(x - s * v)) / (2 * s)).double() for s in (h, h / 2)]
    norm = norm.double()
    gap = (norm - fd[0]).abs() / torch.maximum(norm, fd[0].abs()).clamp_min(1e-300)
    noise = (fd[0] - fd[1]).abs() / torch.maximum(fd[0].abs(), fd[1].abs()).clamp_min(1e-300)
    return float(gap.median()), float(noise.median())


def gradient_check(model: nn.Module, x: torch.Tensor, layer: nn.Module | None = None) -> CheckResult:
    """Autograd against finite differences, scaled to the model's own noise (`GRADIENT_GAP`,
    `GRADIENT_NOISE_FACTOR`): the score is gap / max(GRADIENT_GAP, factor * noise), flagged above 1."""
    gap, noise = gradient_consistency(model, x)
    bound = max(GRADIENT_GAP, GRADIENT_NOISE_FACTOR * noise)
    evidence = (f"autograd and finite differences disagree by {100 * gap:.2f}% (median); two finite differences "
                f"of the same model by {100 * noise:.3f}% (its own noise)")
    return CheckResult("gradient", "gradient vs finite differences", gap / bound, 1.0, gap > bound, evidence,
                       {"gap": gap, "noise": noise, "bound": bound})


def trigger_check(model: nn.Module, x: torch.Tensor, layer: nn.Module | None = None) -> CheckResult:
    """`lie_cam.audit.trigger.trigger_search` against its own `THRESHOLD`: a stimulus of A that moves the
    Grad-CAM map far more than the prediction, scored against the model's own channels, found without
    knowing the trigger (see that module for the maths and the threshold's justification)."""
    found = trigger_search(model, x, layer=layer, seed=0)
    score, threshold = float(found.score), float(TRIGGER_THRESHOLD)
    details = {name: _plain(getattr(found, name, None)) for name in
               ("channel", "cell", "map_change", "prediction_change", "location", "patch_gain", "image")}
    evidence = (f"the strongest stimulus of A (channel {details['channel']}) moves the map by "
                f"{_fmt(details['map_change'])} and the prediction by {_fmt(details['prediction_change'])}: "
                f"10^{score:.2f} times the model's 90th-percentile channel")
    return CheckResult("trigger", "trigger search", score, threshold, score > threshold, evidence, details)


def _plain(value: object) -> object:
    """A JSON-able value: tensors and tuples as lists, numbers as floats."""
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() > 1 else float(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _fmt(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else str(value)


CHECKS: tuple[Check, ...] = (
    Check("architecture", "architecture", architecture_check, False, "modules beyond a plain CNN's layers"),
    Check("weights", "weight magnitude", weights_check, False, "a tensor with an outlier far beyond the model's others"),
    Check("activations", "activation range", activations_check, True, "A's channels spread far wider than other layers'"),
    Check("alpha", "alpha dominance", alpha_check, True, "one channel carries Grad-CAM"),
    Check("randomisation", "randomisation test", randomisation_check, True, "the map survives a random logits layer"),
    Check("gradient", "gradient vs finite differences", gradient_check, True, "autograd disagrees with the function"),
    Check("trigger", "trigger search", trigger_check, True, "a small patch changes the map, not the prediction"),
)
