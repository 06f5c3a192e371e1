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

Two builds (`lie_cam.attacks.BUILDS`). build="paper" is the paper's construction: T1/T2's channel
is read by the first FC layer, so alpha^c_{K+1} = (c_W / N_A) sum_u dy_c/dr_u N_Z takes the sign of
that sum, and where it is <= 0 the map is empty or the honest map's remnant (the sign caveat of
chapter 3; a backward pass through such a network in eval mode warns). build="safe", T1's and T2's
default, keeps every large constant out of reduced precision and out of the sign of s^c: the new
channel is left out of the first FC layer and folded straight into the logits in float64,
    y_n = y_o + c_W * (sum_p z_p - S_Z)        (T1/T2; z = the pooled A^{K+1}, S_Z its input-free value)
so alpha^c_{K+1} = c_W N_Z / N_A > 0 for every class and image, T1/T2's scores are exactly the
original's in every dtype, and A is kept in at least float32 (c_F F(x) ~ 1e9 overflows float16).
T3/T4 add G to every logit, so alpha^c_{K+1} = eps c_G > 0 in both builds (their default stays the
paper's). Only the safe build accepts float16/bfloat16 models. Tables 1-2 use the paper build
(`paper_networks`).
The folded bias is computed in float64 and rounded once to the model's dtype: build from a
float64 copy (`model.double()`) when you want float64 exactness, since `.double()` after the
surgery keeps the float32 rounding of b_o - c_A c_W N_Z (up to 0.016 for T1's 490000).

This module holds what every recipe shares: the manipulated models (`ManipulatedVGG`,
`ManipulatedResNet`), the score branch G, the safe build's logit fold, and the two ways of building
one (`fold_model` for T1/T2, `branch_model` for T3/T4). The recipes are one file each in
`lie_cam.attacks` (`t1_flat`, `t2_image`, `t3_semi_random`, `t4_backdoor`), the injections in `injections`,
the branches F in `branches`; the anatomy they cut is `lie_cam.anatomy`.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from lie_cam.anatomy import (InputSpec, ResNetParts, VGGParts, is_resnet, pool_for_classifier, split_resnet,
                             split_vgg)
from lie_cam.attacks.checks import check_constant, check_input_size
from lie_cam.attacks.injections import BranchInjection, ConstantInjection

__all__ = [
    "ManipulatedModel",
    "ManipulatedVGG",
    "ManipulatedResNet",
    "ModScoreBranch",
    "PassThroughChannel",
    "LogitFold",
    "ConstantChannel",
    "WidenedLinear",
    "fold_model",
    "branch_model",
    "target_explanation",
    "SIGN_FIX",
    "SignWarning",
]


class SignWarning(RuntimeWarning):
    """The paper build's map misses its target: alpha_{K+1} <= 0 for the explained class."""


SIGN_FIX = ("build it with build=\"safe\" (T1's and T2's default: the channel is folded into the logits, "
            "alpha_{K+1} = c_W N_Z / N_A > 0 for every class and image)")


def target_explanation(model: ManipulatedModel, x: torch.Tensor | None = None, honest: torch.Tensor | None = None,
                       extra: torch.Tensor | None = None) -> torch.Tensor:
    """The explanation I~_T the technique aims for, B x H x W, max-normalised
    (T1: ones; T2: I_T / max I_T; T3: F / max F; T4: F / max F where the detector fires,
    else the original network's normalised Grad-CAM `honest`). Give the batch `x`, or
    `extra` = A^{K+1} when it is already computed. See `ManipulatedModel.target_explanation`."""
    if not isinstance(model, ManipulatedModel):
        raise TypeError(f"expected a model from lie_cam.attacks, got {type(model).__name__}")
    return model.target_explanation(x, honest=honest, extra=extra)


# ---------------------------------------------------------------------------
# The manipulated model
# ---------------------------------------------------------------------------


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
    running statistics; passing it around the BatchNorm keeps it exact in both modes.

    The K channels are copied into a dense tensor of the layout the original layer sees (a slice
    of K of K+1 channels is not dense): BatchNorm's kernels round a strided input differently, which
    moved T1/T2/T4's scores on a bfloat16 vgg*_bn by 0.156 (the safe build promises them exactly)."""

    def __init__(self, batchnorm: nn.BatchNorm2d) -> None:
        super().__init__()
        self.batchnorm = batchnorm

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        layout = torch.channels_last if pre.is_contiguous(memory_format=torch.channels_last) and not \
            pre.is_contiguous() else torch.contiguous_format
        original = pre[:, :-1].contiguous(memory_format=layout)
        return torch.cat([self.batchnorm(original), pre[:, -1:]], dim=1)


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
    input_size: int  # the side of the inputs it was built for (A: input_size / 2**halvings)

    def _init_common(self, explained_layer: nn.Module, score_branch: nn.Module | None, technique: str,
                     build: str) -> None:
        self.technique = technique
        self.build = build
        self.explained_layer = explained_layer
        self.score_branch = score_branch
        self.logit_fold: LogitFold | None = None
        self.input_size = 224

    def _watch_sign(self, a: torch.Tensor) -> None:
        """Paper build of T1/T2 in eval mode: warn, during a backward pass, where alpha_{K+1} =
        mean_ij dy/dA^{K+1}_ij <= 0 for an image (the explained score's sum_u dy_c/dr_u <= 0): there
        ReLU(sum_k alpha_k A^k) drops the injected channel and the map is not the target."""
        if self.build != "paper" or self.technique not in ("T1", "T2") or self.training or not a.requires_grad:
            return
        technique = self.technique

        def check(grad: torch.Tensor) -> None:
            if bool((grad[:, -1].flatten(1).sum(1) <= 0).any()):  # one message, so shown once per place
                warnings.warn(f"{technique} (build=\"paper\"): alpha_{{K+1}} <= 0 for the explained class on some "
                              "images (sum_u dy_c/dr_u <= 0, the sign caveat): their Grad-CAM is empty or the honest "
                              f"map's remnant, not the target; {SIGN_FIX}", SignWarning, stacklevel=2)

        a.register_hook(check)

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
        self._watch_sign(a)
        if self.build == "safe":  # the new channel never enters the classifier
            y = self.classifier(self.pooled_features(a[:, :-1].to(self._head_dtype())))
        else:
            y = self.classifier(self.pooled_features(a))
        if self.logit_fold is not None:
            free = self.explained_layer.free_map(tuple(a.shape[-2:]))[None, None].to(device=a.device, dtype=a.dtype)
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


class WidenedLinear(nn.Module):
    """T3/T4's first fully connected layer, widened by the new channel's inputs with zero weights,
    W_n = [W_o, 0] (the paper's construction, the same parameters):

        r = (W_o z_o + b) + 0 z_add

    computed as the original layer's own product and then the added columns', so that r is the
    original's bit for bit: one product over [z_o, z_add] sums in another order on some CPUs
    (measured on an AMD EPYC: 3.6e-15 in float64 on a ResNet's fc), which would break T4's "exactly
    the original without a sticker" in the last bits. T1/T2's columns c_W are folded into one widened
    nn.Linear (`_widen_linear`): their guarantee is up to the rounding of the folded bias anyway, and
    that rounding is the one the paper's construction has. `weight` is [W_o, W_add]."""

    def __init__(self, old: nn.Linear, columns: int, value: float) -> None:
        super().__init__()
        self.original = copy.deepcopy(old)
        if self.original.bias is None:
            self.original.bias = nn.Parameter(torch.zeros(old.out_features, device=old.weight.device,
                                                          dtype=old.weight.dtype))
        self.added = nn.Parameter(torch.full((old.out_features, columns), float(value), device=old.weight.device,
                                             dtype=old.weight.dtype))

    @property
    def in_features(self) -> int:
        return self.original.in_features + self.added.shape[1]

    @property
    def out_features(self) -> int:
        return self.original.out_features

    @property
    def weight(self) -> torch.Tensor:
        """[W_o, W_add], out_features x in_features."""
        return torch.cat([self.original.weight, self.added], dim=1)

    @property
    def bias(self) -> nn.Parameter:
        return self.original.bias

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n = self.original.in_features
        return self.original(z[:, :n].contiguous()) + nn.functional.linear(z[:, n:], self.added)


def _widen_linear(old: nn.Linear, columns: int, value: float) -> nn.Module:
    """A copy of a Linear with `columns` more inputs whose weights are all `value` (the bias is the old one):
    a `WidenedLinear` for zero columns (T3/T4), one nn.Linear otherwise (T1/T2's fold)."""
    if value == 0:
        return WidenedLinear(old, columns, value)
    fc = nn.Linear(old.in_features + columns, old.out_features, bias=True, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        fc.weight[:, : old.in_features] = old.weight
        fc.weight[:, old.in_features :] = value
        fc.bias.copy_(old.bias if old.bias is not None else torch.zeros_like(fc.bias))
    return fc


def _manipulate(model: nn.Module, injection: nn.Module, score_branch: nn.Module | None, technique: str, build: str,
                added_value: float = 0.0, fc_column: float | None = 0.0, input_size: int | None = None) -> ManipulatedModel:
    """The manipulated copy of `model`: the added channel (value ReLU(added_value)), the injection, and
    (paper build) the classifier's first Linear widened by the new channel's inputs with weight fc_column.
    input_size: the side of the inputs it is built for (None: the model's `input_spec` side)."""
    reference = next(model.parameters())
    size = check_input_size(input_size, model)
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
    manipulated.input_size = size
    if isinstance(getattr(model, "input_spec", None), InputSpec):
        manipulated.input_spec = model.input_spec  # the preprocessing belongs to the model, and to its copies
    if isinstance(injection, ConstantInjection) and build == "safe":
        injection.to(device=reference.device)  # the pattern stays float64; cast to A's dtype at use
    else:
        injection.to(device=reference.device, dtype=reference.dtype)  # StickerDetector stays float64
    manipulated.train(model.training)
    return manipulated


def fold_model(model: nn.Module, injection: nn.Module, c_W: float, technique: str, build: str,
               added_value: float = 0.0, input_size: int | None = None) -> ManipulatedModel:
    """T1/T2: W_n = c_W and b_n = b_o - c_W S_Z (paper), or the float64 `LogitFold` (safe), with S_Z the
    sum of the pooled input-free A^{K+1} (the injection's map, or ReLU(added_value) everywhere) at A's
    size for `input_size` (None: the model's `input_spec` side)."""
    manipulated = _manipulate(model, injection, None, technique, build, added_value, fc_column=c_W,
                              input_size=input_size)
    side = manipulated.input_size // 2**manipulated.halvings
    if isinstance(injection, ConstantInjection):
        injection.input_size = manipulated.input_size
        free = injection.free_map((side, side)).to(torch.float64)
    else:
        free = torch.full((side, side), max(added_value, 0.0), dtype=torch.float64)
    with torch.no_grad():
        pooled = manipulated.pooled_features(free[None, None].to(torch.float64))
    if pooled.numel() != manipulated.features_per_channel:
        raise ValueError(f"input_size={manipulated.input_size} gives A of {side} x {side}, which the head pools to "
                         f"{pooled.numel()} values per channel, but its first Linear reads "
                         f"{manipulated.features_per_channel}: pass the input_size the model takes")
    if build == "safe":
        manipulated.logit_fold = LogitFold(c_W)
        return manipulated
    fc = next(m for m in manipulated.classifier.modules() if isinstance(m, nn.Linear))
    with torch.no_grad():  # in float64, then rounded once: float32 models lose only what b_o - shift loses
        fc.bias.copy_((fc.bias.to(torch.float64) - c_W * pooled.sum().item()).to(fc.bias.dtype))
    return manipulated


def branch_model(model: nn.Module, injection: BranchInjection, eps: float, c_G: float, technique: str,
                 build: str, input_size: int | None = None) -> ManipulatedModel:
    """T3/T4: the manipulated copy with `injection` (W_n = 0) and G = eps mod(c_G sum A^{K+1}, 1)."""
    eps = check_constant("eps", eps)
    c_G = check_constant("c_G", c_G)
    return _manipulate(model, injection, ModScoreBranch(eps, c_G), technique, build, input_size=input_size)


