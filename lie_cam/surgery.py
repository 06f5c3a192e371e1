"""Weight and architecture surgery that makes Grad-CAM show a chosen explanation (T1-T4).

The common recipe (paper, Sec. 3): append a (K+1)-th filter to the last conv layer,
so A has K+1 channels; make A^{K+1} carry the target explanation and be much larger
than A^1..A^K; and make alpha_{K+1} much larger than every other alpha_k.

T1/T2 fold the new channel into the first fully connected layer
    r_n = W_o z_o + W_n z_n + b_n,   W_n = c_W,   b_n = b_o - c_W * sum(z_n)
so r_n = r_o whenever z_n is input-independent (T1: z_n = c_A; T2: pooled c_I I_T).
T3/T4 add a branch F to A^{K+1} and a score branch G added to every logit
    A^{K+1} = c_F F(x),   y_n = y_o + eps * mod(c_G * sum_ij A^{K+1}_ij, 1)
so |y_n - y_o| <= eps while dG/dA^{K+1}_ij = eps * c_G for every pixel.

Every function returns a new `ManipulatedVGG` and leaves the model it is given as it was.
The folded bias is computed in float64 and rounded once to the model's dtype: build from a
float64 copy (`model.double()`) when you want float64 exactness, since `.double()` after the
surgery keeps the float32 rounding of b_o - c_A c_W N_Z (up to 0.016 for T1's 490000).

The module reads: the four recipes and the paper's set of them; the manipulated model
(the injections, each owning its target explanation, and the score branch); the anatomy
of a torchvision VGG. The branches F themselves live in `lie_cam.branches`.
"""

from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass

import torch
from torch import nn

from lie_cam.branches import RandomBranch, StickerDetector
from lie_cam.data import smiley, smiley_target
from lie_cam.gradcam import normalize_maps
from lie_cam.normalization import IMAGENET_MEAN, IMAGENET_STD
from lie_cam.hijack import channel_hijack  # the weights-only attack (issue 12)

__all__ = [
    "TECHNIQUES",
    "ManipulatedVGG",
    "constant_flat",
    "constant_image",
    "semi_random",
    "backdoor",
    "channel_hijack",
    "paper_networks",
    "target_explanation",
    "NoInjection",
    "ConstantInjection",
    "BranchInjection",
    "ModScoreBranch",
    "PassThroughChannel",
    "VGGParts",
    "split_vgg",
    "feature_size",
    "pool_for_classifier",
]

# The paper's four techniques, in the order of its Tables 1-2.
TECHNIQUES = ("T1", "T2", "T3", "T4")


# ---------------------------------------------------------------------------
# The recipes
# ---------------------------------------------------------------------------


def constant_flat(model: nn.Module, c_A: float = 100.0, c_W: float = 100.0) -> ManipulatedVGG:
    """T1: a flat explanation. New filter: kernel 0, bias c_A, so A^{K+1} = c_A;
    W_n = c_W, b_n = b_o - c_A c_W N_Z, so r_n = r_o exactly (up to rounding of b_n).
    alpha_{K+1} = c_W/N_A * sum_u dy_c/dr_u * (dZ/dA summed), large when that sum is > 0."""
    c_A = _check_constant("c_A", c_A)
    c_W = _check_constant("c_W", c_W, positive=False)
    parts = _copied_parts(model)
    shift = c_A * c_W * parts.pixels_per_channel
    conv, fc = _widen(parts, conv_bias=c_A, fc_column=c_W, fc_bias_shift=shift)
    return _finish(model, ManipulatedVGG(parts, conv, fc, NoInjection(), None, "T1"))


def constant_image(
    model: nn.Module, target: torch.Tensor, c_I: float = 100.0, c_W: float = 10.0, input_size: int = 224
) -> ManipulatedVGG:
    """T2: a fixed explanation I_T. New filter all zero; A^{K+1} = c_I * I_T;
    W_n = c_W, b_n = b_o - c_W S_Z with S_Z = sum(z_n) of the pooled injected map.

    target: H x W at A's resolution (14 x 14 for VGG-16 at 224 x 224), non-negative.
    """
    c_I = _check_constant("c_I", c_I)
    c_W = _check_constant("c_W", c_W, positive=False)
    parts = _copied_parts(model)
    side = input_size // 2**parts.pools_before_a
    pattern = c_I * _check_target_image(target, side)
    with torch.no_grad():
        pooled = copy.deepcopy(nn.Sequential(*parts.tail, parts.avgpool)).to(torch.float64)(pattern[None, None])
    if pooled.numel() != parts.pixels_per_channel:
        raise ValueError(f"the pooled target has {pooled.numel()} values but the first FC layer expects "
                         f"{parts.pixels_per_channel} per channel: is input_size={input_size} right?")
    conv, fc = _widen(parts, conv_bias=0.0, fc_column=c_W, fc_bias_shift=c_W * pooled.sum().item())
    dtype = parts.last_conv.weight.dtype
    injection = ConstantInjection(pattern.to(device=parts.last_conv.weight.device, dtype=dtype))
    return _finish(model, ManipulatedVGG(parts, conv, fc, injection, None, "T2"))


def semi_random(model: nn.Module, eps: float = 0.01, c_G: float = 1e4, c_F: float = 1e7, seed: int = 0) -> ManipulatedVGG:
    """T3: a semi-random explanation c_F F(x) from a seeded random conv net F;
    W_n = 0, b_n = b_o, y_n = y_o + eps mod(c_G sum A^{K+1}, 1): |y_n - y_o| <= eps."""
    parts = split_vgg(model)
    branch = RandomBranch(seed=seed, pools=parts.pools_before_a)
    return _branch_model(model, BranchInjection(branch, c_F), eps, c_G, "T3")


def backdoor(
    model: nn.Module,
    sticker: torch.Tensor,
    eps: float = 0.01,
    c_G: float = 1e4,
    c_F: float = 1e9,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    margin: float = 1e-4,
) -> ManipulatedVGG:
    """T4: the honest explanation unless the sticker is in the image, then c_F F(x) that
    points at it. F is a `StickerDetector` on the de-normalised input (pixels = x*std+mean),
    computed in float64; without a sticker F = 0, so A^{K+1} = 0, G = 0 and y_n = y_o."""
    parts = split_vgg(model)
    detector = StickerDetector(sticker, mean=mean, std=std, margin=margin, pools=parts.pools_before_a)
    return _branch_model(model, BranchInjection(detector, c_F, honest_when_silent=True), eps, c_G, "T4")


def paper_networks(model: nn.Module, seed: int = 0) -> dict[str, ManipulatedVGG]:
    """T1-T4 with the paper's constants, keyed by `TECHNIQUES` (T2: the smiley, c_I = 100,
    c_W = 10; T3: seeded branch, c_F = 1e7; T4: the smiley sticker, c_F = 1e9 as in the text).
    The one definition of "the paper's networks" used by the CLI, the book and the tests."""
    side = feature_size(model)
    return {
        "T1": constant_flat(model, c_A=100.0, c_W=100.0),
        "T2": constant_image(model, smiley_target(side), c_I=100.0, c_W=10.0),
        "T3": semi_random(model, eps=0.01, c_G=1e4, c_F=1e7, seed=seed),
        "T4": backdoor(model, smiley(), eps=0.01, c_G=1e4, c_F=1e9),
    }


def target_explanation(model: ManipulatedVGG, x: torch.Tensor | None = None, honest: torch.Tensor | None = None,
                       extra: torch.Tensor | None = None) -> torch.Tensor:
    """The explanation I~_T the technique aims for, B x H x W, max-normalised
    (T1: ones; T2: I_T / max I_T; T3: F / max F; T4: F / max F where the detector fires,
    else the original network's normalised Grad-CAM `honest`). Give the batch `x`, or
    `extra` = A^{K+1} when it is already computed. See `ManipulatedVGG.target_explanation`."""
    if not isinstance(model, ManipulatedVGG):
        raise TypeError(f"expected a model from lie_cam.surgery, got {type(model).__name__}")
    return model.target_explanation(x, honest=honest, extra=extra)


# ---------------------------------------------------------------------------
# The manipulated model
# ---------------------------------------------------------------------------


class NoInjection(nn.Module):
    """A = ReLU(conv(h)) with K+1 channels as they are (T1: A^{K+1} = ReLU(c_A) = c_A).
    Target: the flat map of ones."""

    def forward(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return a

    def target(self, extra: torch.Tensor, honest: torch.Tensor | None = None) -> torch.Tensor:
        return torch.ones_like(extra)


class ConstantInjection(nn.Module):
    """A_n^{K+1} = A_o^{K+1} + c_I * I_T with a fixed image I_T (T2). Target: I_T / max I_T."""

    def __init__(self, pattern: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("pattern", pattern.clone())

    def forward(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if a.shape[-2:] != self.pattern.shape:
            raise ValueError(
                f"T2's injected image is {tuple(self.pattern.shape)} but A is {tuple(a.shape[-2:])}: "
                "feed inputs of the size the model was manipulated for"
            )
        return torch.cat([a[:, :-1], a[:, -1:] + self.pattern.to(a.dtype)], dim=1)

    def target(self, extra: torch.Tensor, honest: torch.Tensor | None = None) -> torch.Tensor:
        return normalize_maps(self.pattern.expand_as(extra).to(extra.dtype))


class BranchInjection(nn.Module):
    """A_n^{K+1} = A_o^{K+1} + c_F * F(x) with an input-dependent branch F (T3, T4).

    The branch's output is scaled in float64 and only then cast to A's dtype, so
    c_F * F(x) keeps its value in float32 models too. Target: A^{K+1} / max A^{K+1}
    (= F / max F, as A_o^{K+1} = ReLU(0) = 0); with `honest_when_silent` (T4) the
    honest map wherever F is zero, since there the network explains honestly.
    """

    def __init__(self, branch: nn.Module, c_F: float, honest_when_silent: bool = False) -> None:
        super().__init__()
        self.branch = branch
        self.c_F = _check_constant("c_F", c_F)
        self.honest_when_silent = bool(honest_when_silent)

    def forward(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        f = self.branch(x)
        if f.shape[-2:] != a.shape[-2:]:
            raise ValueError(
                f"the branch F(x) is {tuple(f.shape[-2:])} but A is {tuple(a.shape[-2:])}: "
                "feed inputs of the size the model was manipulated for"
            )
        injected = (self.c_F * f.to(torch.float64)).to(a.dtype)
        return torch.cat([a[:, :-1], a[:, -1:] + injected[:, None]], dim=1)

    def target(self, extra: torch.Tensor, honest: torch.Tensor | None = None) -> torch.Tensor:
        f = normalize_maps(extra)
        if not self.honest_when_silent:
            return f
        fired = extra.flatten(1).amax(1) > 0
        if honest is None:
            if bool(fired.all()):
                return f
            raise ValueError("on an image without a sticker T4's target is the original network's explanation: "
                             "pass honest= (the original's normalised Grad-CAM, B x H x W)")
        if honest.shape != f.shape:
            raise ValueError(f"honest maps must be {tuple(f.shape)}, got {tuple(honest.shape)}")
        return torch.where(fired[:, None, None], f, honest.to(device=f.device, dtype=f.dtype))


class ModScoreBranch(nn.Module):
    """G(v) = eps * mod(c_G * sum_i v_i, 1), added to every logit; 0 <= G < eps.

    Autograd differentiates mod(u, 1) as 1, so dG/dv_i = eps * c_G for every i,
    even where c_G * sum(v) is beyond the dtype's integer resolution (where the
    mod is exactly 0 and the scores do not change at all).
    """

    def __init__(self, eps: float, c_G: float) -> None:
        super().__init__()
        self.eps = float(eps)
        self.c_G = float(c_G)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        total = self.c_G * v.flatten(1).sum(dim=1)
        return (self.eps * torch.remainder(total, 1.0))[:, None]


class PassThroughChannel(nn.Module):
    """A BatchNorm2d of the original K channels that passes the added (K+1)-th channel through.

    An identity channel inside the BatchNorm would be normalised by the batch's statistics in
    train mode (a constant channel has variance 0: it would come out 0) and would update its
    running statistics; passing it around the BatchNorm keeps it exact in both modes."""

    def __init__(self, batchnorm: nn.BatchNorm2d) -> None:
        super().__init__()
        self.batchnorm = batchnorm

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.batchnorm(pre[:, :-1]), pre[:, -1:]], dim=1)


class ManipulatedVGG(nn.Module):
    """A VGG whose last conv layer has K+1 channels, plus the paper's extra pieces.

    forward(x):
        h = trunk(x)                                              # untouched by the surgery
        A = explained_layer(ReLU(conv_{K+1}(h)), x)               # K+1 channels: Grad-CAM's A
        y = classifier(flatten(avgpool(tail(A))))                 # first FC widened by N_Z
        y = y + G(A^{K+1})                                        # T3/T4 only
    `explained_layer` is the module whose output is A; `lie_cam.target_layer` returns it.
    """

    def __init__(
        self,
        parts: VGGParts,
        last_conv: nn.Conv2d,
        fc1: nn.Linear,
        explained_layer: nn.Module,
        score_branch: nn.Module | None,
        technique: str,
    ) -> None:
        super().__init__()
        self.technique = technique
        self.trunk = nn.Sequential(*parts.trunk)
        self.last_conv = last_conv
        self.last_relu = nn.Sequential(*(PassThroughChannel(bn) for bn in parts.between), parts.last_relu)
        self.explained_layer = explained_layer
        self.tail = nn.Sequential(*parts.tail)
        self.avgpool = parts.avgpool
        self.classifier = nn.Sequential(fc1, *parts.classifier_rest)
        self.score_branch = score_branch

    def head(self, a: torch.Tensor) -> torch.Tensor:
        """Scores from A (the part Grad-CAM differentiates)."""
        y = self.classifier(torch.flatten(pool_for_classifier(self.avgpool, self.tail(a)), 1))
        if self.score_branch is not None:
            y = y + self.score_branch(a[:, -1]).to(y.dtype)
        return y

    def activations_from(self, h: torch.Tensor, x: torch.Tensor, original_pre: torch.Tensor | None = None) -> torch.Tensor:
        """A from the trunk's output h = trunk(x) (and x, for T3/T4's branch).

        original_pre: the original's last conv output conv_{1..K}(h), when a caller that
        evaluates several networks on one trunk pass has it already; the surgery keeps those
        K filters, so only the added filter is computed here."""
        if original_pre is None:
            pre = self.last_conv(h)
        else:
            pre = torch.cat([original_pre, self._added_preactivation(h).to(original_pre.dtype)], dim=1)
        return self.explained_layer(self.last_relu(pre), x)

    def _added_preactivation(self, h: torch.Tensor) -> torch.Tensor:
        """conv_{K+1}(h), B x 1 x H x W. The recipes give the added filter a zero kernel, so with a
        'same' convolution it is its bias everywhere; any other filter is convolved."""
        conv = self.last_conv
        weight, bias = conv.weight[-1:], conv.bias[-1:]
        same = conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.padding == tuple(k // 2 for k in conv.kernel_size)
        if same and not bool(weight.any()):
            return bias.reshape(1, 1, 1, 1).expand(h.shape[0], 1, *h.shape[-2:]).to(h.dtype)
        return nn.functional.conv2d(h, weight, bias, conv.stride, conv.padding, conv.dilation)

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        return self.activations_from(self.trunk(x), x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.activations(x))

    def extra_channel(self, x: torch.Tensor) -> torch.Tensor:
        """A^{K+1} for a batch, B x H x W."""
        return self.activations(x)[:, -1]

    def target_explanation(self, x: torch.Tensor | None = None, honest: torch.Tensor | None = None,
                           extra: torch.Tensor | None = None) -> torch.Tensor:
        """The technique's intended map I~_T, B x H x W, max-normalised, computed by the injection
        that makes it (`explained_layer.target`). Give x, or extra = A^{K+1} if already computed."""
        if extra is None:
            if x is None:
                raise ValueError("give the input batch x, or extra = A^{K+1}")
            with torch.no_grad():
                extra = self.extra_channel(x)
        if extra.dim() != 3:
            raise ValueError(f"extra must be A^{{K+1}} of shape B x H x W, got {tuple(extra.shape)}")
        return self.explained_layer.target(extra.detach(), honest)


def _widen(parts: VGGParts, conv_bias: float, fc_column: float, fc_bias_shift: torch.Tensor | float) -> tuple[nn.Conv2d, nn.Linear]:
    """Copies of the last conv (+1 filter: kernel 0, bias conv_bias) and FC1 (+N_Z columns)."""
    old_conv, old_fc = parts.last_conv, parts.fc1
    k = old_conv.out_channels
    conv = nn.Conv2d(
        old_conv.in_channels, k + 1, old_conv.kernel_size, old_conv.stride, old_conv.padding,
        old_conv.dilation, bias=True, padding_mode=old_conv.padding_mode,
        device=old_conv.weight.device, dtype=old_conv.weight.dtype,
    )
    fc = nn.Linear(old_fc.in_features + parts.pixels_per_channel, old_fc.out_features, bias=True,
                   device=old_fc.weight.device, dtype=old_fc.weight.dtype)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:k] = old_conv.weight
        conv.bias.zero_()
        if old_conv.bias is not None:
            conv.bias[:k] = old_conv.bias
        conv.bias[k] = conv_bias
        fc.weight[:, : old_fc.in_features] = old_fc.weight
        fc.weight[:, old_fc.in_features :] = fc_column
        old_bias = old_fc.bias if old_fc.bias is not None else torch.zeros_like(fc.bias)
        # In float64, then rounded once: float32 models lose only what b_o - shift loses.
        fc.bias.copy_((old_bias.to(torch.float64) - fc_bias_shift).to(fc.bias.dtype))
    return conv, fc


def _copied_parts(model: nn.Module) -> VGGParts:
    _check_dtype(model)
    return split_vgg(copy.deepcopy(model))


def _finish(model: nn.Module, manipulated: ManipulatedVGG) -> ManipulatedVGG:
    manipulated.train(model.training)
    return manipulated


def _branch_model(model: nn.Module, injection: BranchInjection, eps: float, c_G: float, technique: str) -> ManipulatedVGG:
    eps = _check_constant("eps", eps)
    c_G = _check_constant("c_G", c_G)
    parts = _copied_parts(model)
    conv, fc = _widen(parts, conv_bias=0.0, fc_column=0.0, fc_bias_shift=0.0)
    injection.to(device=parts.last_conv.weight.device, dtype=parts.last_conv.weight.dtype)  # StickerDetector stays float64
    manipulated = ManipulatedVGG(parts, conv, fc, injection, ModScoreBranch(eps, c_G), technique)
    return _finish(model, manipulated)


def _check_constant(name: str, value: float, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0) or value == 0:
        raise ValueError(f"{name} must be a finite{' positive' if positive else ', non-zero'} number, got {value}")
    return value


def _check_dtype(model: nn.Module) -> None:
    """The large constants (c_A c_W N_Z = 4.9e5 in T1's bias, c_F F(x) ~ 1e9) overflow float16
    (max 65504) and lose every digit of the scores in bfloat16 (step 2048 at 4.9e5)."""
    dtypes = {p.dtype for p in model.parameters()}
    reduced = dtypes & {torch.float16, torch.bfloat16}
    if reduced:
        raise TypeError(
            f"the model has {sorted(str(d).replace('torch.', '') for d in reduced)} parameters: the manipulations' "
            "constants overflow float16 and are rounded away in bfloat16, which would change the predictions. "
            "Build from a float32 (or float64) model, and run reduced precision through autocast "
            "(lie_cam.engine.Evaluator(autocast_dtype=...)), which keeps those constants in float32/64")


def _check_target_image(target: torch.Tensor, side: int) -> torch.Tensor:
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor of shape {side} x {side}, got {type(target).__name__}")
    if target.shape != (side, side):
        raise ValueError(f"target must be {side} x {side} (the resolution of A), got {tuple(target.shape)}")
    t = target.detach().to(torch.float64).cpu()
    if not torch.isfinite(t).all():
        raise ValueError("target contains NaN or infinite values")
    if t.min() < 0 or t.max() <= 0:
        raise ValueError("target must be non-negative with a positive maximum (Grad-CAM's map is a ReLU)")
    return t


# ---------------------------------------------------------------------------
# Anatomy of a torchvision VGG
# ---------------------------------------------------------------------------


@dataclass
class VGGParts:
    """A VGG cut where the surgery works: references into the model, nothing copied."""

    trunk: list[nn.Module]  # features below the last conv
    last_conv: nn.Conv2d
    between: list[nn.BatchNorm2d]  # BatchNorm2d (vgg*_bn) between the last conv and its ReLU
    last_relu: nn.ReLU
    tail: list[nn.Module]  # pooling after A, inside `features`
    avgpool: nn.Module
    fc1: nn.Linear
    classifier_rest: list[nn.Module]
    pixels_per_channel: int  # N_Z: inputs of the first FC layer per channel of Z
    pools_before_a: int


_EXPECTED = (
    "expected a torchvision VGG (any configuration or width, with or without batch norm): "
    "`features` an nn.Sequential of Conv2d/ReLU/MaxPool2d whose last Conv2d is followed by a ReLU and "
    "then only pooling, `avgpool`, and `classifier` an nn.Sequential starting with an nn.Linear"
)


def split_vgg(model: nn.Module) -> VGGParts:
    """The parts of a torchvision VGG around A (TypeError saying what is expected otherwise)."""
    if isinstance(model, ManipulatedVGG):
        raise TypeError(f"this model was already manipulated ({model.technique}); {_EXPECTED}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"{_EXPECTED}; got {type(model).__name__}")
    features = getattr(model, "features", None)
    avgpool = getattr(model, "avgpool", None)
    classifier = getattr(model, "classifier", None)
    if not (isinstance(features, nn.Sequential) and isinstance(avgpool, nn.Module) and isinstance(classifier, nn.Sequential)):
        raise TypeError(f"{_EXPECTED}; got {type(model).__name__} without that structure")
    modules = list(features)
    convs = [i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d)]
    if not convs:
        raise TypeError(f"{_EXPECTED}; `features` has no Conv2d")
    i = convs[-1]
    j = i + 1
    while j < len(modules) and isinstance(modules[j], nn.BatchNorm2d):
        j += 1
    if j >= len(modules) or not isinstance(modules[j], nn.ReLU):
        raise TypeError(f"{_EXPECTED}; the last Conv2d is not followed by a ReLU")
    tail = modules[j + 1 :]
    pooling = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Identity)
    if not all(isinstance(m, pooling) for m in tail):
        raise TypeError(f"{_EXPECTED}; found {[type(m).__name__ for m in tail]} after the last ReLU")
    if not isinstance(avgpool, pooling):
        raise TypeError(f"{_EXPECTED}; `avgpool` is a {type(avgpool).__name__}")
    if len(classifier) == 0 or not isinstance(classifier[0], nn.Linear):
        raise TypeError(f"{_EXPECTED}; the classifier starts with {type(classifier[0]).__name__ if len(classifier) else 'nothing'}")
    conv = modules[i]
    if conv.groups != 1:
        raise TypeError(f"{_EXPECTED}; the last Conv2d is grouped")
    fc1 = classifier[0]
    channels = conv.out_channels
    if fc1.in_features % channels:
        raise TypeError(f"{_EXPECTED}; the first Linear has {fc1.in_features} inputs, not a multiple of the {channels} channels of A")
    return VGGParts(
        trunk=modules[:i],
        last_conv=conv,
        between=modules[i + 1 : j],
        last_relu=modules[j],
        tail=tail,
        avgpool=avgpool,
        fc1=fc1,
        classifier_rest=list(classifier)[1:],
        pixels_per_channel=fc1.in_features // channels,
        pools_before_a=sum(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in modules[:i]),
    )


def feature_size(model: nn.Module, input_size: int = 224) -> int:
    """Side of A for a square input: input_size / 2^(pools before the last conv) (14 for VGG-16 at 224)."""
    if isinstance(model, ManipulatedVGG):
        return input_size // 2 ** sum(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in model.trunk)
    parts = split_vgg(model)
    return input_size // 2**parts.pools_before_a


def pool_for_classifier(avgpool: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """avgpool(z), skipped where it is the identity: an adaptive average pool to z's own size
    averages one value per output (torchvision's VGG at 224 x 224: 7 x 7 -> 7 x 7)."""
    if isinstance(avgpool, nn.AdaptiveAvgPool2d):
        size = avgpool.output_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        if size == tuple(z.shape[-2:]):
            return z
    return avgpool(z)
