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

Every function returns a new manipulated model (`ManipulatedVGG`, or `ManipulatedResNet` for a
torchvision ResNet) and leaves the model it is given as it was.

ResNets (global average pooling, then one Linear): A is the last block's output and the head is
y = W GAP(A) + b, so dy_c/dA^k_ij = W_ck / N_A for every input. The fold goes into the logit layer
itself: W_{c,K+1} = c_W, b_c -= c_W mean(A^{K+1}), and alpha^c_{K+1} = c_W / N_A > 0 for every class
and image (no sign caveat). The shift c_W mean(A^{K+1}) is the same for all classes, so scores
explained through the softmax (Grad-CAM of p_c or log p_c) do not see the new channel at all.

build="paper" (the default) is the paper's construction. build="safe" keeps every large constant
out of reduced precision and out of the sign of s^c: the new channel is left out of the first FC
layer and folded straight into the logits in float64,
    y_n = y_o + c_W * (sum_p z_p - S_Z)        (T1/T2; z = the pooled A^{K+1}, S_Z its input-free value)
so alpha^c_{K+1} = c_W N_Z / N_A > 0 for every class, T1/T2's scores are exactly the original's
in every dtype, and A is kept in at least float32 (c_F F(x) ~ 1e9 overflows float16). Only the safe
build accepts float16/bfloat16 models.
The folded bias is computed in float64 and rounded once to the model's dtype: build from a
float64 copy (`model.double()`) when you want float64 exactness, since `.double()` after the
surgery keeps the float32 rounding of b_o - c_A c_W N_Z (up to 0.016 for T1's 490000).

The module reads: the four recipes and the paper's set of them; the manipulated models
(the injections, each owning its target explanation, the score branch and the logit fold); the
anatomy of a torchvision VGG and of a torchvision ResNet. The branches F themselves live in `lie_cam.branches`.
"""

from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass

import torch
from torch import nn

from lie_cam.branches import RandomBranch, StickerDetector, check_sticker
from lie_cam.data import smiley, smiley_target
from lie_cam.gradcam import normalize_maps
from lie_cam.normalization import IMAGENET_MEAN, IMAGENET_STD
from lie_cam.hijack import channel_hijack  # the weights-only attack (issue 12)

__all__ = [
    "TECHNIQUES",
    "BUILDS",
    "ManipulatedModel",
    "ManipulatedVGG",
    "ManipulatedResNet",
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
    "LogitFold",
    "ConstantChannel",
    "VGGParts",
    "split_vgg",
    "ResNetParts",
    "split_resnet",
    "is_resnet",
    "feature_size",
    "pool_for_classifier",
]

# The paper's four techniques, in the order of its Tables 1-2.
TECHNIQUES = ("T1", "T2", "T3", "T4")
# "paper": the paper's construction; "safe": logit fold in float64, A in >= float32 (module docstring).
BUILDS = ("paper", "safe")


# ---------------------------------------------------------------------------
# The recipes
# ---------------------------------------------------------------------------


def constant_flat(model: nn.Module, c_A: float = 100.0, c_W: float = 100.0, build: str = "paper",
                  input_size: int = 224) -> ManipulatedModel:
    """T1: a flat explanation. New filter: kernel 0, bias c_A, so A^{K+1} = c_A;
    W_n = c_W, b_n = b_o - c_A c_W N_Z, so r_n = r_o exactly (up to rounding of b_n).
    alpha_{K+1} = c_W/N_A * sum_u dy_c/dr_u * (dZ/dA summed), large when that sum is > 0.
    build="safe": y_n = y_o + c_W (sum z_n - c_A N_Z) in float64, alpha_{K+1} = c_W N_Z / N_A."""
    c_A = _check_constant("c_A", c_A)
    c_W = _check_constant("c_W", c_W, positive=False)
    build = _check_build(build, model)
    if build == "safe":
        flat = torch.full((feature_size(model, input_size),) * 2, c_A, dtype=torch.float64)
        return _fold_model(model, ConstantInjection(flat), flat, c_W, "T1", build, input_size=input_size)
    return _fold_model(model, NoInjection(), None, c_W, "T1", build, added_value=c_A, input_size=input_size)


def constant_image(
    model: nn.Module, target: torch.Tensor, c_I: float = 100.0, c_W: float = 10.0, input_size: int = 224,
    build: str = "paper",
) -> ManipulatedModel:
    """T2: a fixed explanation I_T. New filter all zero; A^{K+1} = c_I * I_T;
    W_n = c_W, b_n = b_o - c_W S_Z with S_Z = sum(z_n) of the pooled injected map.

    target: H x W at A's resolution (14 x 14 for VGG-16 at 224 x 224, 7 x 7 for a ResNet), non-negative.
    """
    c_I = _check_constant("c_I", c_I)
    c_W = _check_constant("c_W", c_W, positive=False)
    build = _check_build(build, model)
    pattern = c_I * _check_target_image(target, feature_size(model, input_size))
    return _fold_model(model, ConstantInjection(pattern), pattern, c_W, "T2", build, input_size=input_size)


def semi_random(model: nn.Module, eps: float = 0.01, c_G: float = 1e4, c_F: float = 1e7, seed: int = 0,
                build: str = "paper", downsample: int = 2) -> ManipulatedModel:
    """T3: a semi-random explanation c_F F(x) from a seeded random conv net F;
    W_n = 0, b_n = b_o, y_n = y_o + eps mod(c_G sum A^{K+1}, 1): |y_n - y_o| <= eps.
    downsample: F's convolutions run on the input averaged over 2^d x 2^d cells
    (`lie_cam.branches.RandomBranch`; 0 is the paper's full-resolution F)."""
    build = _check_build(build, model)
    branch = RandomBranch(seed=seed, pools=_halvings(model), downsample=min(downsample, _halvings(model)))
    return _branch_model(model, BranchInjection(branch, c_F), eps, c_G, "T3", build)


def backdoor(
    model: nn.Module,
    sticker: torch.Tensor,
    eps: float = 0.01,
    c_G: float = 1e4,
    c_F: float = 1e9,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    margin: float = 1e-4,
    build: str = "paper",
) -> ManipulatedModel:
    """T4: the honest explanation unless the sticker is in the image, then c_F F(x) that
    points at it. F is a `StickerDetector` on the de-normalised input (pixels = x*std+mean),
    computed in float64; without a sticker F = 0, so A^{K+1} = 0, G = 0 and y_n = y_o.

    build="safe" on a float16/bfloat16 model: the input itself is rounded (unit roundoff u), which
    moves the detector's response at an exact match by up to sum|k| max(std) max|x| u (~0.7 for
    bfloat16), far above the paper's margin 1e-4; the margin is raised to twice that bound, so the
    sticker is still detected (and patches that close to it fire too)."""
    build = _check_build(build, model)
    dtype = next(model.parameters()).dtype
    if build == "safe" and dtype in (torch.float16, torch.bfloat16):
        margin = max(margin, 2 * _input_rounding_bound(sticker, mean, std, dtype))
    detector = StickerDetector(sticker, mean=mean, std=std, margin=margin, pools=_halvings(model))
    return _branch_model(model, BranchInjection(detector, c_F, honest_when_silent=True), eps, c_G, "T4", build)


def paper_networks(model: nn.Module, seed: int = 0, build: str = "paper",
                   input_size: int = 224) -> dict[str, ManipulatedModel]:
    """T1-T4 with the paper's constants, keyed by `TECHNIQUES` (T2: the smiley, c_I = 100,
    c_W = 10; T3: seeded branch, c_F = 1e7; T4: the smiley sticker, c_F = 1e9 as in the text).
    The one definition of "the paper's networks" used by the CLI, the book and the tests.

    For a ResNet c_W is 1000 in T1 and T2: a GAP head gives alpha_{K+1} = c_W / N_A (N_A = 49 at 224)
    instead of VGG-16's (N_Z / N_A) c_W s^c, so the paper's c_W would leave the honest map visible."""
    side = feature_size(model, input_size)
    c_W1, c_W2 = (1000.0, 1000.0) if is_resnet(model) else (100.0, 10.0)
    return {
        "T1": constant_flat(model, c_A=100.0, c_W=c_W1, build=build, input_size=input_size),
        "T2": constant_image(model, smiley_target(side), c_I=100.0, c_W=c_W2, input_size=input_size, build=build),
        "T3": semi_random(model, eps=0.01, c_G=1e4, c_F=1e7, seed=seed, build=build),
        "T4": backdoor(model, smiley(), eps=0.01, c_G=1e4, c_F=1e9, build=build),
    }


def target_explanation(model: ManipulatedModel, x: torch.Tensor | None = None, honest: torch.Tensor | None = None,
                       extra: torch.Tensor | None = None) -> torch.Tensor:
    """The explanation I~_T the technique aims for, B x H x W, max-normalised
    (T1: ones; T2: I_T / max I_T; T3: F / max F; T4: F / max F where the detector fires,
    else the original network's normalised Grad-CAM `honest`). Give the batch `x`, or
    `extra` = A^{K+1} when it is already computed. See `ManipulatedModel.target_explanation`."""
    if not isinstance(model, ManipulatedModel):
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


class ConstantChannel(nn.Module):
    """Appends the (K+1)-th channel of a widened layer whose added filter has a zero kernel:
    ReLU(0 * h + b) = ReLU(b) everywhere (a ResNet's last block gets it this way)."""

    def __init__(self, bias: float = 0.0) -> None:
        super().__init__()
        self.bias = float(bias)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        extra = torch.full_like(a[:, :1], max(self.bias, 0.0))
        return torch.cat([a, extra], dim=1)


class LogitFold(nn.Module):
    """The safe build's fold, straight into the logits and in float64:
        y_n = y_o + c_W * (sum_p z_p - S_Z),  z = pool(A^{K+1}),  S_Z = sum_p pool(I)_p
    with I the input-free injected map, pooled in A's own dtype so that S_Z cancels sum_p z_p
    exactly. dy_c/dA^{K+1} = c_W dpool for every class c: alpha^c_{K+1} = c_W N_Z / N_A > 0
    (VGG's max-pool tail), c_W / N_A (a GAP head)."""

    def __init__(self, c_W: float) -> None:
        super().__init__()
        self.c_W = float(c_W)

    def forward(self, z: torch.Tensor, z_free: torch.Tensor) -> torch.Tensor:
        total = z.flatten(1).to(torch.float64).sum(dim=1) - z_free.to(torch.float64).sum()
        return (self.c_W * total)[:, None]


class ManipulatedModel(nn.Module):
    """What the manipulated VGG and ResNet share: A = explained_layer([a_o, A_o^{K+1}], x), the head
        y = classifier(pool(A))                       paper build (first FC / fc widened by the new channel)
        y = classifier(pool(A^{1..K})) + fold(A^{K+1})  safe build (`LogitFold`, T1/T2)
        y = y + G(A^{K+1})                            T3/T4
    Subclasses give `activations_from`, `_pool` (A -> the classifier's per-channel inputs) and `classifier`."""

    technique: str
    build: str
    halvings: int  # A is input_size / 2**halvings on a side
    features_per_channel: int  # N_Z: inputs of the classifier per channel of A (VGG-16: 49; a GAP head: 1)

    def _init_common(self, explained_layer: nn.Module, score_branch: nn.Module | None, technique: str,
                     build: str) -> None:
        self.technique = technique
        self.build = build
        self.explained_layer = explained_layer
        self.score_branch = score_branch
        self.logit_fold: LogitFold | None = None

    def pooled_features(self, a: torch.Tensor) -> torch.Tensor:
        """What the classifier reads from A: flatten(pool(A)), B x (channels * N_Z)."""
        raise NotImplementedError

    def _head_dtype(self) -> torch.dtype:
        return next(m for m in self.classifier.modules() if isinstance(m, nn.Linear)).weight.dtype

    def _keep_wide(self, a: torch.Tensor) -> torch.Tensor:
        """The safe build keeps A in at least float32 (c_F F(x) and c_I I_T must not round or overflow)."""
        return a.to(torch.promote_types(a.dtype, torch.float32)) if self.build == "safe" else a

    def head(self, a: torch.Tensor) -> torch.Tensor:
        """Scores from A (the part Grad-CAM differentiates)."""
        if self.build == "safe":  # the new channel never enters the classifier
            y = self.classifier(self.pooled_features(a[:, :-1].to(self._head_dtype())))
        else:
            y = self.classifier(self.pooled_features(a))
        if self.logit_fold is not None:
            free = self.explained_layer.pattern[None, None].to(device=a.device, dtype=a.dtype)
            y = y + self.logit_fold(self.pooled_features(a[:, -1:]), self.pooled_features(free)).to(y.dtype)
        if self.score_branch is not None:
            y = y + self.score_branch(a[:, -1]).to(y.dtype)
        return y

    def activations_from(self, h: torch.Tensor, x: torch.Tensor, original_pre: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

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


class ManipulatedVGG(ManipulatedModel):
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
        build: str = "paper",
    ) -> None:
        super().__init__()
        self._init_common(explained_layer, score_branch, technique, build)
        self.halvings = parts.pools_before_a
        self.features_per_channel = parts.pixels_per_channel
        self.trunk = nn.Sequential(*parts.trunk)
        self.last_conv = last_conv
        self.last_relu = nn.Sequential(*(PassThroughChannel(bn) for bn in parts.between), parts.last_relu)
        self.tail = nn.Sequential(*parts.tail)
        self.avgpool = parts.avgpool
        self.classifier = nn.Sequential(fc1, *parts.classifier_rest)

    def pooled_features(self, a: torch.Tensor) -> torch.Tensor:
        return torch.flatten(pool_for_classifier(self.avgpool, self.tail(a)), 1)

    def activations_from(self, h: torch.Tensor, x: torch.Tensor, original_pre: torch.Tensor | None = None) -> torch.Tensor:
        """A from the trunk's output h = trunk(x) (and x, for T3/T4's branch).

        original_pre: the original's last conv output conv_{1..K}(h), when a caller that
        evaluates several networks on one trunk pass has it already; the surgery keeps those
        K filters, so only the added filter is computed here."""
        if original_pre is None:
            pre = self.last_conv(h)
        else:
            pre = torch.cat([original_pre, self._added_preactivation(h).to(original_pre.dtype)], dim=1)
        return self.explained_layer(self._keep_wide(self.last_relu(pre)), x)

    def _added_preactivation(self, h: torch.Tensor) -> torch.Tensor:
        """conv_{K+1}(h), B x 1 x H x W. The recipes give the added filter a zero kernel, so with a
        'same' convolution it is its bias everywhere; any other filter is convolved."""
        conv = self.last_conv
        weight, bias = conv.weight[-1:], conv.bias[-1:]
        same = conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.padding == tuple(k // 2 for k in conv.kernel_size)
        if same and not bool(weight.any()):
            return bias.reshape(1, 1, 1, 1).expand(h.shape[0], 1, *h.shape[-2:]).to(h.dtype)
        return nn.functional.conv2d(h, weight, bias, conv.stride, conv.padding, conv.dilation)


class ManipulatedResNet(ManipulatedModel):
    """A torchvision ResNet whose last block's output A gets a (K+1)-th channel.

    forward(x):
        h = trunk(x)                                   # stem, layer1..layer3, layer4 but its last block
        A = explained_layer([last_block(h), ReLU(b_{K+1})], x)
        y = fc(flatten(avgpool(A)))                    # fc widened by one column (paper build)
        y = y + G(A^{K+1})                             # T3/T4 only
    The added channel bypasses the block's batch norm and residual sum, so it is exact in train mode too.
    """

    def __init__(self, parts: ResNetParts, fc: nn.Linear, explained_layer: nn.Module, score_branch: nn.Module | None,
                 technique: str, build: str = "paper", added_value: float = 0.0) -> None:
        super().__init__()
        self._init_common(explained_layer, score_branch, technique, build)
        self.halvings = parts.halvings
        self.features_per_channel = 1
        self.trunk = nn.Sequential(*parts.stem, *parts.stages)
        self.last_block = parts.last_block
        self.added_channel = ConstantChannel(added_value)
        self.avgpool = parts.avgpool
        self.classifier = nn.Sequential(fc)

    def pooled_features(self, a: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(a), 1)

    def activations_from(self, h: torch.Tensor, x: torch.Tensor, original_pre: torch.Tensor | None = None) -> torch.Tensor:
        """A from h = trunk(x) (and x, for T3/T4's branch). original_pre: the original's last
        block output, when the caller has it already."""
        a = self.last_block(h) if original_pre is None else original_pre
        return self.explained_layer(self._keep_wide(self.added_channel(a)), x)


def _widen_conv(old: nn.Conv2d, bias: float) -> nn.Conv2d:
    """A copy of the last conv with one more filter: kernel 0, bias `bias`."""
    k = old.out_channels
    conv = nn.Conv2d(old.in_channels, k + 1, old.kernel_size, old.stride, old.padding, old.dilation, bias=True,
                     padding_mode=old.padding_mode, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:k] = old.weight
        conv.bias.zero_()
        if old.bias is not None:
            conv.bias[:k] = old.bias
        conv.bias[k] = bias
    return conv


def _widen_linear(old: nn.Linear, columns: int, value: float) -> nn.Linear:
    """A copy of a Linear with `columns` more inputs, whose weights are all `value` (the bias is the old one)."""
    fc = nn.Linear(old.in_features + columns, old.out_features, bias=True, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        fc.weight[:, : old.in_features] = old.weight
        fc.weight[:, old.in_features :] = value
        fc.bias.copy_(old.bias if old.bias is not None else torch.zeros_like(fc.bias))
    return fc


def _manipulate(model: nn.Module, injection: nn.Module, score_branch: nn.Module | None, technique: str, build: str,
                added_value: float = 0.0, fc_column: float | None = 0.0) -> ManipulatedModel:
    """The manipulated copy of `model`: the added channel (value ReLU(added_value)), the injection, and
    (paper build) the classifier's first Linear widened by the new channel's inputs with weight fc_column."""
    reference = next(model.parameters())
    copied = copy.deepcopy(model)
    column = None if build == "safe" else fc_column
    if is_resnet(copied):
        rparts = split_resnet(copied)
        fc = rparts.fc if column is None else _widen_linear(rparts.fc, 1, column)
        manipulated: ManipulatedModel = ManipulatedResNet(rparts, fc, injection, score_branch, technique, build,
                                                          added_value)
    else:
        parts = split_vgg(copied)
        fc1 = parts.fc1 if column is None else _widen_linear(parts.fc1, parts.pixels_per_channel, column)
        manipulated = ManipulatedVGG(parts, _widen_conv(parts.last_conv, added_value), fc1, injection, score_branch,
                                     technique, build)
    if isinstance(injection, ConstantInjection) and build == "safe":
        injection.to(device=reference.device)  # the pattern stays float64; cast to A's dtype at use
    else:
        injection.to(device=reference.device, dtype=reference.dtype)  # StickerDetector stays float64
    manipulated.train(model.training)
    return manipulated


def _fold_model(model: nn.Module, injection: nn.Module, input_free: torch.Tensor | None, c_W: float, technique: str,
                build: str, added_value: float = 0.0, input_size: int = 224) -> ManipulatedModel:
    """T1/T2: W_n = c_W and b_n = b_o - c_W S_Z (paper), or the float64 `LogitFold` (safe)."""
    manipulated = _manipulate(model, injection, None, technique, build, added_value, fc_column=c_W)
    side = input_size // 2**manipulated.halvings
    free = input_free if input_free is not None else torch.full((side, side), max(added_value, 0.0), dtype=torch.float64)
    with torch.no_grad():
        pooled = manipulated.pooled_features(free[None, None].to(torch.float64))
    if pooled.numel() != manipulated.features_per_channel:
        raise ValueError(f"the pooled target has {pooled.numel()} values but the classifier expects "
                         f"{manipulated.features_per_channel} per channel: is input_size={input_size} right?")
    if build == "safe":
        manipulated.logit_fold = LogitFold(c_W)
        return manipulated
    fc = next(m for m in manipulated.classifier.modules() if isinstance(m, nn.Linear))
    with torch.no_grad():  # in float64, then rounded once: float32 models lose only what b_o - shift loses
        fc.bias.copy_((fc.bias.to(torch.float64) - c_W * pooled.sum().item()).to(fc.bias.dtype))
    return manipulated


def _branch_model(model: nn.Module, injection: BranchInjection, eps: float, c_G: float, technique: str,
                  build: str) -> ManipulatedModel:
    eps = _check_constant("eps", eps)
    c_G = _check_constant("c_G", c_G)
    return _manipulate(model, injection, ModScoreBranch(eps, c_G), technique, build)


def _check_build(build: str, model: nn.Module) -> str:
    if build not in BUILDS:
        raise ValueError(f"build must be one of {BUILDS}, got {build!r}")
    if isinstance(model, ManipulatedModel):
        raise TypeError(f"this model was already manipulated ({model.technique}); {_EXPECTED}")
    if not isinstance(model, nn.Module) or next(model.parameters(), None) is None:
        raise TypeError(f"{_EXPECTED}; got {type(model).__name__}")
    if build == "paper":
        _check_dtype(model)
    return build


def _input_rounding_bound(sticker: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                          dtype: torch.dtype) -> float:
    """sum|k| * max(std) * max|x| * u: how far rounding a normalised input (pixels in [0, 1]) to `dtype`
    can move the sticker detector's response r = sum k * (x * std + mean) + b."""
    s = check_sticker(sticker)
    k = (s - s.mean()).abs().sum().item()
    largest_x = max(max(abs(0 - m), abs(1 - m)) / d for m, d in zip(mean, std))
    return k * max(std) * largest_x * torch.finfo(dtype).eps / 2


def _halvings(model: nn.Module) -> int:
    """log2 of input side / A's side."""
    if isinstance(model, ManipulatedModel):
        return model.halvings
    return split_resnet(model).halvings if is_resnet(model) else split_vgg(model).pools_before_a


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
            "Pass build=\"safe\" (the constants stay in float32/64 and out of the first FC layer), or build from "
            "a float32 (or float64) model and run reduced precision through lie_cam.engine.Evaluator(autocast_dtype=...), "
            "which keeps the heads in float32 (a plain torch.autocast around the paper build casts the folded bias too)")


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
    "expected a torchvision ResNet (`layer4` of blocks, `avgpool` a global average pool, `fc` a Linear) or "
    "a torchvision VGG (any configuration or width, with or without batch norm): "
    "`features` an nn.Sequential of Conv2d/ReLU/MaxPool2d whose last Conv2d is followed by a ReLU and "
    "then only pooling, `avgpool`, and `classifier` an nn.Sequential starting with an nn.Linear"
)


def split_vgg(model: nn.Module) -> VGGParts:
    """The parts of a torchvision VGG around A (TypeError saying what is expected otherwise)."""
    if isinstance(model, ManipulatedModel):
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
    """Side of A for a square input: input_size / 2^(halvings before A) (VGG-16: 14, a ResNet: 7 at 224)."""
    return input_size // 2 ** _halvings(model)


def pool_for_classifier(avgpool: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """avgpool(z), skipped where it is the identity: an adaptive average pool to z's own size
    averages one value per output (torchvision's VGG at 224 x 224: 7 x 7 -> 7 x 7)."""
    if isinstance(avgpool, nn.AdaptiveAvgPool2d):
        size = avgpool.output_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        if size == tuple(z.shape[-2:]):
            return z
    return avgpool(z)


# ---------------------------------------------------------------------------
# Anatomy of a torchvision ResNet
# ---------------------------------------------------------------------------


@dataclass
class ResNetParts:
    """A torchvision ResNet cut at A, the last block's output: references into the model, nothing copied."""

    stem: list[nn.Module]  # conv1, bn1, relu, maxpool
    stages: list[nn.Module]  # layer1..layer3 and layer4's blocks but the last
    last_block: nn.Module
    avgpool: nn.Module
    fc: nn.Linear
    halvings: int  # log2 of the total stride (5 for every torchvision ResNet)


_RESNET_STEM = ("conv1", "bn1", "relu", "maxpool")


def is_resnet(model: nn.Module) -> bool:
    """Whether `model` has a torchvision ResNet's layout (stem, layer1..layer4, avgpool, fc)."""
    return (isinstance(model, nn.Module) and not isinstance(model, ManipulatedModel)
            and all(hasattr(model, name) for name in (*_RESNET_STEM, "layer1", "layer2", "layer3", "avgpool"))
            and isinstance(getattr(model, "layer4", None), nn.Sequential)
            and isinstance(getattr(model, "fc", None), nn.Linear))


def split_resnet(model: nn.Module) -> ResNetParts:
    """The parts of a torchvision ResNet (BasicBlock or Bottleneck, any depth or width) around A."""
    expected = ("expected a torchvision ResNet: conv1, bn1, relu, maxpool, layer1..layer4 (nn.Sequential of "
                "blocks), avgpool = AdaptiveAvgPool2d(1) and fc = nn.Linear")
    if not is_resnet(model):
        raise TypeError(f"{expected}; got {type(model).__name__}")
    if len(model.layer4) == 0:
        raise TypeError(f"{expected}; layer4 has no block")
    pool = model.avgpool
    if not (isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1))):
        raise TypeError(f"{expected}; avgpool is {pool!r}, not a global average pool")
    blocks = [*model.layer1, *model.layer2, *model.layer3, *model.layer4]
    channels = [m.out_channels for m in model.layer4[-1].modules() if isinstance(m, nn.Conv2d)]
    if not channels or model.fc.in_features != channels[-1]:
        raise TypeError(f"{expected}; fc has {model.fc.in_features} inputs but the last block gives "
                        f"{channels[-1] if channels else 'no'} channels")
    stride = _stride(model.conv1) * _stride(model.maxpool)
    for block in blocks:
        stride *= _stride(block)
    halvings = int(round(math.log2(stride)))
    if 2**halvings != stride:
        raise TypeError(f"{expected}; the total stride {stride} is not a power of 2")
    return ResNetParts(
        stem=[getattr(model, name) for name in _RESNET_STEM],
        stages=[model.layer1, model.layer2, model.layer3, *list(model.layer4)[:-1]],
        last_block=model.layer4[-1],
        avgpool=pool,
        fc=model.fc,
        halvings=halvings,
    )


def _stride(module: nn.Module) -> int:
    """The spatial stride of a conv, pool or torchvision block (its `stride` attribute)."""
    stride = getattr(module, "stride", 1)
    return int(stride[0] if isinstance(stride, (tuple, list)) else stride)
