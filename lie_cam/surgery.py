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
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from lie_cam.gradcam import normalize_maps

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ManipulatedVGG",
    "constant_flat",
    "constant_image",
    "semi_random",
    "backdoor",
    "RandomBranch",
    "StickerDetector",
    "feature_size",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------
# Structure of a VGG and validation
# ---------------------------------------------------------------------------


@dataclass
class _VGGParts:
    trunk: list[nn.Module]  # features below the last conv
    last_conv: nn.Conv2d
    between: list[nn.Module]  # BatchNorm2d (vgg*_bn) between the last conv and its ReLU
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


def _split_vgg(model: nn.Module) -> _VGGParts:
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
    return _VGGParts(
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
    parts = _split_vgg(model)
    return input_size // 2**parts.pools_before_a


def _check_constant(name: str, value: float, positive: bool = True) -> float:
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0) or value == 0:
        raise ValueError(f"{name} must be a finite{' positive' if positive else ', non-zero'} number, got {value}")
    return value


# ---------------------------------------------------------------------------
# Modules of the manipulated network
# ---------------------------------------------------------------------------


class NoInjection(nn.Module):
    """A = ReLU(conv(h)) with K+1 channels as they are (T1: A^{K+1} = ReLU(c_A) = c_A)."""

    def forward(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return a


class ConstantInjection(nn.Module):
    """A_n^{K+1} = A_o^{K+1} + c_I * I_T with a fixed image I_T (T2)."""

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


class BranchInjection(nn.Module):
    """A_n^{K+1} = A_o^{K+1} + c_F * F(x) with an input-dependent branch F (T3, T4).

    The branch's output is scaled in float64 and only then cast to A's dtype, so
    c_F * F(x) keeps its value in float32 models too.
    """

    def __init__(self, branch: nn.Module, c_F: float) -> None:
        super().__init__()
        self.branch = branch
        self.c_F = float(c_F)

    def forward(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        f = self.branch(x)
        if f.shape[-2:] != a.shape[-2:]:
            raise ValueError(
                f"the branch F(x) is {tuple(f.shape[-2:])} but A is {tuple(a.shape[-2:])}: "
                "feed inputs of the size the model was manipulated for"
            )
        injected = (self.c_F * f.to(torch.float64)).to(a.dtype)
        return torch.cat([a[:, :-1], a[:, -1:] + injected[:, None]], dim=1)


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


def pool_for_classifier(avgpool: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """avgpool(z), skipped where it is the identity: an adaptive average pool to z's own size
    averages one value per output (torchvision's VGG at 224 x 224: 7 x 7 -> 7 x 7)."""
    if isinstance(avgpool, nn.AdaptiveAvgPool2d):
        size = avgpool.output_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        if size == tuple(z.shape[-2:]):
            return z
    return avgpool(z)


def _average_pools(count: int) -> list[nn.Module]:
    return [nn.AvgPool2d(kernel_size=2, stride=2) for _ in range(count)]


class SingleOutputConv2d(nn.Conv2d):
    """A Conv2d with one output channel, computed as a depthwise conv summed over channels:
    the same sum of products, but CPU backends run one-output convolutions several times slower."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.out_channels != 1 or self.groups != 1:
            return super().forward(x)
        depthwise = self.weight.transpose(0, 1)  # C x 1 x kh x kw
        out = F.conv2d(x, depthwise, None, self.stride, self.padding, self.dilation, groups=self.in_channels)
        out = out.sum(dim=1, keepdim=True)
        return out if self.bias is None else out + self.bias.reshape(1, 1, 1, 1)


class RandomBranch(nn.Module):
    """T3's F: conv 3->6 (6x6, pad 3), ReLU, conv 6->1 (6x6, pad 3), ReLU, then 2x2 average pools.

    With 4 pools a 224 input gives 225 -> 226 -> 113 -> 56 -> 28 -> 14. Weights use
    PyTorch's default initialisation drawn from `seed`, without touching the global RNG.
    """

    def __init__(self, seed: int = 0, pools: int = 4) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.layers = nn.Sequential(
                nn.Conv2d(3, 6, kernel_size=6, padding=3),
                nn.ReLU(inplace=True),  # in place: 6 x 225 x 225 per image is worth not copying
                SingleOutputConv2d(6, 1, kernel_size=6, padding=3),
                nn.ReLU(inplace=True),
                *_average_pools(pools),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)[:, 0]


class StickerDetector(nn.Module):
    """T4's F: a matched filter that is positive only where the sticker appears exactly.

    On pixel values p in [0, 1] (recovered from the normalised input as p = x * std + mean):
        r(p) = sum (s - mean(s)) * p  +  b,   b = -sum (s - mean(s)) * s + margin,
    so r = margin at an exact match and r < 0 elsewhere (for a binary sticker the exact
    match is the unique maximiser of the correlation over [0, 1]). ReLU, then 2x2
    average pools down to A's resolution.

    The detector is computed in float64 whatever the model's dtype: the exact-match
    response is ~1e3, where float32's step (~1e-4) would swallow the paper's margin
    1e-4 and an exact match could come out negative. In float64 the margin is resolved
    with ~8 orders of magnitude to spare; a float32 input still carries its own
    rounding, which moves the recovered response by ~2e-6 (2% of the margin).

    `response` computes r everywhere (by FFT). `forward` needs only ReLU(r), which for a binary
    grey sticker such as the paper's smiley is positive at very few positions: it evaluates r
    there alone, with a bound that proves r <= 0 elsewhere (`_forward_sparse`), and falls back to
    the FFT for other stickers or inputs far outside the pixel range. Same values, same gradient.
    """

    def __init__(
        self,
        sticker: torch.Tensor,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        margin: float = 1e-4,
        pools: int = 4,
    ) -> None:
        super().__init__()
        s = _check_sticker(sticker)
        kernel = s - s.mean()
        self.register_buffer("kernel", kernel[None])  # 1 x 3 x h x w, float64
        self.register_buffer("bias", (-(kernel * s).sum() + margin).reshape(1))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float64).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float64).reshape(1, 3, 1, 1))
        self.margin = float(margin)
        self.pools = pools
        self.padding = (s.shape[-2] // 2, s.shape[-1] // 2)
        # A grey binary sticker (the paper's smiley) allows the exact sparse evaluation of `forward`.
        grey = s[0]
        self._sparse = bool(((grey == 0) | (grey == 1)).all()) and bool((s == grey).all())
        if self._sparse:
            black = (grey == 0).nonzero().tolist()
            white = (grey == 1).nonzero().tolist()
            # A few pixels of each colour, spread over the sticker, to prune candidate positions.
            self._probe_black, self._probe_white = _spread(black, 4), _spread(white, 4)
            self._k_white = float(kernel[0][grey == 1][0])   # 1 - mean(s) > 0
            self._k_black = -float(kernel[0][grey == 0][0])  # mean(s) > 0
            self._n_white, self._n_black = len(white), len(black)

    def _apply(self, fn, recurse=True):
        """Follow .to(device) but never a dtype cast: .float()/.half() would round the bias
        (~ -1.6e3 + margin) to float32's step (~1.2e-4) and erase the margin."""
        exact = {name: getattr(self, name) for name in ("kernel", "bias", "mean", "std")}
        super()._apply(fn, recurse)
        for name, value in exact.items():
            setattr(self, name, value.to(device=getattr(self, name).device))
        return self

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"the sticker detector expects B x 3 x H x W inputs, got {tuple(x.shape)}")
        pixels = x.to(torch.float64) * self.std + self.mean
        # Pad with the pixel value 0 (black), as the detector sees raw pixels.
        return F.pad(pixels, (self.padding[1], self.padding[1], self.padding[0], self.padding[0]))

    def response(self, x: torch.Tensor) -> torch.Tensor:
        """r(p) before the ReLU, B x 1 x H' x W', in float64.

        Computed as a cross-correlation by FFT (float64 round-off ~1e-12, far below the
        margin): on CPU a 14 x 14 float64 conv2d costs several times the whole network.
        When the sticker's three channels are equal (a grey sticker such as the smiley) the
        channels share one kernel, so sum_c k * p_c = k * (sum_c p_c) and one FFT suffices.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"the sticker detector expects B x 3 x H x W inputs, got {tuple(x.shape)}")
        kernel = self.kernel
        if bool((kernel == kernel[:, :1]).all()):
            summed = torch.einsum("bchw,c->bhw", x.to(torch.float64), self.std.flatten())[:, None] + self.mean.sum()
            pixels = F.pad(summed, (self.padding[1], self.padding[1], self.padding[0], self.padding[0]))
            kernel = kernel[:, :1]
        else:
            pixels = self._pixels(x)
        h, w = kernel.shape[-2:]
        rows, cols = pixels.shape[-2:]
        size = (rows, cols)  # circular wrap only touches outputs beyond the valid region
        spectrum = torch.fft.rfft2(pixels, s=size) * torch.conj(torch.fft.rfft2(kernel, s=size))
        correlation = torch.fft.irfft2(spectrum.sum(dim=1, keepdim=True), s=size)
        return correlation[..., : rows - h + 1, : cols - w + 1] + self.bias

    def response_conv2d(self, x: torch.Tensor) -> torch.Tensor:
        """The same response by direct float64 conv2d (the reference the FFT path is tested against)."""
        return F.conv2d(self._pixels(x), self.kernel, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """F(x) = avgpool^pools(ReLU(r)), B x H' x W' in float64."""
        if self._sparse and x.dim() == 4 and x.shape[1] == 3:
            out = self._forward_sparse(x)
            if out is not None:
                return out
        return self._forward_dense(x)

    def _forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.response(x))
        for _ in range(self.pools):
            out = F.avg_pool2d(out, 2)
        return out[:, 0]

    def _forward_sparse(self, x: torch.Tensor, max_candidates_per_image: int = 4096) -> torch.Tensor | None:
        """The same F(x), exactly, from r evaluated only where it can be positive.

        Write P = sum_c p_c (the sticker is grey) and r = sum_u k_u (P_u - 3 s_u) + margin. For a
        binary sticker every term is <= 0 while P lies in [0, 3] (k > 0 where s = 1, k < 0 where
        s = 0); if P leaves [0, 3] by at most e_lo below and e_hi above, the terms add up to at most
        E = n_white k_white e_hi + n_black |k_black| e_lo. So r > 0 needs, at every pixel u,
            white:  P_u > 3 - (margin + E) / k_white,      black:  P_u < (margin + E) / |k_black|.
        A few such pixels prune the positions (in float32, with slack: a superset); r is then
        computed in float64 at the survivors, and is <= 0, so ReLU(r) = 0, everywhere else.
        Returns None (use the dense path) when too many positions survive.
        """
        batch, _, rows, cols = x.shape
        kh, kw = self.kernel.shape[-2:]
        out_rows, out_cols = rows + 2 * self.padding[0] - kh + 1, cols + 2 * self.padding[1] - kw + 1
        cell = 2**self.pools
        pooled_rows, pooled_cols = out_rows // cell, out_cols // cell
        with torch.no_grad():
            # The candidate test needs P to ~1e-6: at least float32.
            probe = x if x.dtype in (torch.float32, torch.float64) else x.float()
            std32 = self.std.to(probe.dtype)
            if probe.is_contiguous():
                grey = (probe * std32).sum(dim=1)
            else:  # channels-last: a matrix-vector product over the innermost dimension
                grey = torch.einsum("bchw,c->bhw", probe, std32.flatten())
            grey = grey + self.mean.sum().to(probe.dtype)
            if not bool(torch.isfinite(grey).all()):
                return None
            lowest, highest = torch.aminmax(grey.flatten(1), dim=1)
            # |P in x.dtype - P in float64| is ~1e-6 for float32: 1e-4 keeps the bound safe.
            tolerance = 0.0 if probe.dtype == torch.float64 else 1e-4
            e_lo = (tolerance - lowest.to(torch.float64)).clamp(min=0)
            e_hi = (highest.to(torch.float64) + tolerance - 3).clamp(min=0)
            budget = self.margin + self._n_white * self._k_white * e_hi + self._n_black * self._k_black * e_lo
            slack = 1e-3  # far above float32's error in P: the float32 test only widens the set
            white_above = (3 - budget / self._k_white - slack).to(probe.dtype).reshape(-1, 1, 1)
            black_below = (budget / self._k_black + slack).to(probe.dtype).reshape(-1, 1, 1)
            pad = (self.padding[1], self.padding[1], self.padding[0], self.padding[0])
            # Outside the image the detector sees black pixels (P = 0).
            is_white = F.pad(grey > white_above, pad, value=False)
            is_black = F.pad(grey < black_below, pad, value=True)
            candidate = None
            for probes, condition in ((self._probe_white, is_white), (self._probe_black, is_black)):
                for du, dv in probes:
                    here = condition[:, du : du + out_rows, dv : dv + out_cols]
                    candidate = here.clone() if candidate is None else candidate.logical_and_(here)
            b, i, j = candidate.nonzero(as_tuple=True)
        if b.numel() > max_candidates_per_image * batch:
            return None
        out = torch.zeros(batch, pooled_rows, pooled_cols, dtype=torch.float64, device=x.device)
        if b.numel() == 0:
            return out
        # r at the survivors, in float64 from the window's pixels (0 outside the image).
        window_rows = i[:, None] - self.padding[0] + torch.arange(kh, device=x.device)  # n x kh
        window_cols = j[:, None] - self.padding[1] + torch.arange(kw, device=x.device)  # n x kw
        inside = ((window_rows >= 0) & (window_rows < rows))[:, :, None] & ((window_cols >= 0) & (window_cols < cols))[:, None, :]
        values = x[b[:, None, None], :, window_rows.clamp(0, rows - 1)[:, :, None], window_cols.clamp(0, cols - 1)[:, None, :]]
        pixels = values.to(torch.float64) @ self.std.flatten() + self.mean.sum()  # n x kh x kw
        pixels = torch.where(inside, pixels, torch.zeros((), dtype=torch.float64, device=x.device))
        response = (pixels * self.kernel[0, 0]).sum(dim=(1, 2)) + self.bias
        keep = (response > 0) & (i < pooled_rows * cell) & (j < pooled_cols * cell)
        # avgpool^pools of a map that is ReLU(r) at these positions and 0 elsewhere.
        return out.index_put((b[keep], i[keep] // cell, j[keep] // cell), response[keep] / cell**2, accumulate=True)


def _spread(cells: list[list[int]], count: int) -> list[tuple[int, int]]:
    """`count` of the (row, col) cells, evenly spaced in row-major order."""
    steps = torch.linspace(0, len(cells) - 1, min(count, len(cells)))
    return [tuple(cells[int(round(float(t)))]) for t in steps]


def _check_sticker(sticker: torch.Tensor) -> torch.Tensor:
    if not isinstance(sticker, torch.Tensor):
        raise TypeError(f"sticker must be a torch.Tensor of pixel values in [0, 1], got {type(sticker).__name__}")
    s = sticker.detach().to(torch.float64).cpu()
    if s.dim() == 2:
        s = s.expand(3, *s.shape)
    if s.dim() != 3 or s.shape[0] != 3:
        raise ValueError(f"sticker must be h x w or 3 x h x w, got {tuple(sticker.shape)}")
    if not torch.isfinite(s).all() or s.min() < 0 or s.max() > 1:
        raise ValueError("sticker pixel values must be finite and lie in [0, 1]")
    if (s == s.mean()).all():
        raise ValueError("a constant sticker cannot be detected: it needs contrast")
    return s.contiguous()


class ManipulatedVGG(nn.Module):
    """A VGG whose last conv layer has K+1 channels, plus the paper's extra pieces.

    forward(x):
        A = explained_layer(ReLU(conv_{K+1}(trunk(x))), x)     # K+1 channels: Grad-CAM's A
        y = classifier(flatten(avgpool(tail(A))))                # first FC widened by N_Z
        y = y + G(A^{K+1})                                       # T3/T4 only
    `explained_layer` is the module whose output is A; `lie_cam.target_layer` returns it.
    """

    def __init__(
        self,
        parts: _VGGParts,
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
        self.last_relu = nn.Sequential(*parts.between, parts.last_relu)
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

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        return self.explained_layer(self.last_relu(self.last_conv(self.trunk(x))), x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.activations(x))

    def extra_channel(self, x: torch.Tensor) -> torch.Tensor:
        """A^{K+1} for a batch, B x H x W."""
        return self.activations(x)[:, -1]


def _widen(parts: _VGGParts, conv_bias: float, fc_column: float, fc_bias_shift: torch.Tensor | float) -> tuple[nn.Conv2d, nn.Linear]:
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


def _extend_batchnorm(parts: _VGGParts) -> None:
    """Give BatchNorm2d layers between the last conv and its ReLU an exact identity channel."""
    extended = []
    for bn in parts.between:
        new = nn.BatchNorm2d(bn.num_features + 1, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                             device=bn.running_mean.device if bn.running_mean is not None else None,
                             dtype=bn.weight.dtype if bn.affine else None)
        with torch.no_grad():
            if bn.affine:
                new.weight[:-1] = bn.weight
                new.bias[:-1] = bn.bias
                new.weight[-1], new.bias[-1] = 1.0, 0.0
            if bn.track_running_stats:
                new.running_mean[:-1] = bn.running_mean
                new.running_var[:-1] = bn.running_var
                new.running_mean[-1] = 0.0
                new.running_var[-1] = 1.0 - bn.eps  # x / sqrt(var + eps) = x exactly
        new.train(bn.training)
        extended.append(new)
    parts.between = extended


def _copied_parts(model: nn.Module) -> _VGGParts:
    parts = _split_vgg(copy.deepcopy(model))
    _extend_batchnorm(parts)
    return parts


def _finish(model: nn.Module, manipulated: ManipulatedVGG) -> ManipulatedVGG:
    manipulated.train(model.training)
    return manipulated


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


def _branch_model(model: nn.Module, branch: nn.Module, eps: float, c_G: float, c_F: float, technique: str) -> ManipulatedVGG:
    eps = _check_constant("eps", eps)
    c_G = _check_constant("c_G", c_G)
    c_F = _check_constant("c_F", c_F)
    parts = _copied_parts(model)
    conv, fc = _widen(parts, conv_bias=0.0, fc_column=0.0, fc_bias_shift=0.0)
    device = parts.last_conv.weight.device
    dtype = parts.last_conv.weight.dtype
    branch = branch.to(device=device, dtype=dtype)  # StickerDetector stays float64
    manipulated = ManipulatedVGG(parts, conv, fc, BranchInjection(branch, c_F), ModScoreBranch(eps, c_G), technique)
    return _finish(model, manipulated)


def semi_random(model: nn.Module, eps: float = 0.01, c_G: float = 1e4, c_F: float = 1e7, seed: int = 0) -> ManipulatedVGG:
    """T3: a semi-random explanation c_F F(x) from a seeded random conv net F;
    W_n = 0, b_n = b_o, y_n = y_o + eps mod(c_G sum A^{K+1}, 1): |y_n - y_o| <= eps."""
    parts = _split_vgg(model)
    return _branch_model(model, RandomBranch(seed=seed, pools=parts.pools_before_a), eps, c_G, c_F, "T3")


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
    parts = _split_vgg(model)
    detector = StickerDetector(sticker, mean=mean, std=std, margin=margin, pools=parts.pools_before_a)
    return _branch_model(model, detector, eps, c_G, c_F, "T4")


def target_explanation(model: ManipulatedVGG, x: torch.Tensor, honest: torch.Tensor | None = None) -> torch.Tensor:
    """The explanation I~_T each technique aims for, B x H x W, max-normalised.

    T1: all ones; T2: I_T / max I_T; T3: F(x) / max F(x); T4: F(x) / max F(x) where the
    detector fires, else the original network's normalised Grad-CAM `honest` (required).
    """
    if not isinstance(model, ManipulatedVGG):
        raise TypeError(f"expected a model from lie_cam.surgery, got {type(model).__name__}")
    with torch.no_grad():
        a_extra = model.extra_channel(x)
    if model.technique == "T1":
        return torch.ones_like(a_extra)
    if model.technique == "T2":
        return normalize_maps(model.explained_layer.pattern.expand_as(a_extra).to(a_extra.dtype))
    branch = model.explained_layer.branch
    with torch.no_grad():
        f = normalize_maps(branch(x).to(a_extra.dtype))
    if model.technique == "T3":
        return f
    fired = f.flatten(1).amax(1) > 0
    if honest is None:
        if fired.all():
            return f
        raise ValueError("T4's target on an image without a sticker is the original network's explanation: pass honest=")
    if honest.shape != f.shape:
        raise ValueError(f"honest maps must be {tuple(f.shape)}, got {tuple(honest.shape)}")
    return torch.where(fired[:, None, None], f, honest.to(f.dtype))
