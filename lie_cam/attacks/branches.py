"""The input-dependent branches F of T3 and T4 (paper, Sec. 3.3-3.4).

T3's `RandomBranch`: a small, seeded random conv net, F(x) >= 0 at A's resolution (>= FLOOR > 0 for the
default cheap branch), whose map looks plausible (blobs where the image has structure) but means nothing.
T4's `StickerDetector`: a matched filter, positive only where the sticker appears exactly, so
F(x) = 0 on every image without it.

`lie_cam.attacks.semi_random` and `lie_cam.attacks.backdoor` scale F by c_F and add it to A^{K+1}.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from lie_cam.anatomy import InputSpec

__all__ = ["FLOOR", "RandomBranch", "CellMean", "StickerDetector", "SingleOutputConv2d", "check_sticker"]

# The least value of T3's cheap branch F (`RandomBranch`, downsample > 0): F(x) >= FLOOR > 0 on every image.
FLOOR = 1e-4


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


class CellMean(nn.Module):
    """The mean over non-overlapping k x k cells, channel by channel (= nn.AvgPool2d(k), and = k/2^j
    of them chained for k = 2^j), computed as a depthwise convolution with weights 1/k^2: the
    same sums, which CPU backends run several times faster than their average pool on 3 channels."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = int(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        weight = torch.full((channels, 1, self.k, self.k), 1.0 / self.k**2, dtype=x.dtype, device=x.device)
        return F.conv2d(x, weight, stride=self.k, groups=channels)


class RandomBranch(nn.Module):
    """T3's F: a seeded random conv net on the input, F(x) >= floor at A's resolution,

        F(x) = avgpool^(pools - d)( ReLU( conv_2( ReLU( conv_1( avgpool^d(x) ) ) ) ) ) + floor,

    conv_1: 3 -> 6 channels, conv_2: 6 -> 1, both 6x6 with padding 3; every avgpool is 2x2.
    d = `downsample` pools of the input come first. d = 0 is the paper's F, at full resolution:
    224 -> 225 -> 226 -> 113 -> 56 -> 28 -> 14 (4 pools). The default d = 2 runs the same two
    convolutions on the input averaged to 56 x 56: 56 -> 57 -> 58 -> 29 -> 14, at 1/16 of the
    cost (it was T3's largest fixed cost, about a fifth of a forward pass of the compact model).

    floor: F's least value. On the averaged input every conv_2 response can be negative, so that the
    ReLU leaves F(x) = 0 on the whole image and T3's lie vanishes (Grad-CAM shows the honest map): with
    d = 2, seed 1 did so on 14 of 200 test scenes, seeds 13 and 18 on 9 and 1. The default floor
    (`FLOOR` = 1e-4 for d > 0, below 1% of F's typical values 0.01-0.06) makes F(x) >= floor > 0
    everywhere by construction: where the ReLU leaves nothing, F is flat and so is T3's map (still not
    the honest one). d = 0 keeps floor = 0 by default: the paper's F exactly (it did not vanish on those
    images, but nothing guarantees it). Every F >= 0 keeps T3's score bound and alpha_{K+1} = eps c_G;
    the target is F / max F, defined when F > 0 somewhere. d only sets the scale of the structure F
    responds to (a 6x6 kernel spans 6 * 2^d pixels).
    Weights use PyTorch's default initialisation drawn from `seed` (the same for every d and floor),
    without touching the global RNG.
    """

    def __init__(self, seed: int = 0, pools: int = 4, downsample: int = 2, floor: float | None = None) -> None:
        super().__init__()
        if isinstance(downsample, bool) or not isinstance(downsample, int) or not 0 <= downsample <= pools:
            raise ValueError(f"downsample must be an int in [0, pools={pools}], got {downsample!r}")
        floor = (FLOOR if downsample else 0.0) if floor is None else floor
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor < math.inf:
            raise ValueError(f"floor must be a finite number >= 0 (F's least value), got {floor!r}")
        self.downsample = downsample
        self.floor = float(floor)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.layers = nn.Sequential(
                *([CellMean(2**downsample)] if downsample else []),  # avgpool^d in one pass
                nn.Conv2d(3, 6, kernel_size=6, padding=3),
                nn.ReLU(inplace=True),  # in place: 6 x 225 x 225 per image (d = 0) is worth not copying
                SingleOutputConv2d(6, 1, kernel_size=6, padding=3),
                nn.ReLU(inplace=True),
                *_average_pools(pools - downsample),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.layers(x)[:, 0]
        return f + self.floor if self.floor else f

    def bound(self, radius: float) -> float:
        """An upper bound of F(x) for inputs with |x| <= radius: averages do not grow |x|, and
        |conv(v)| <= sum|w| max|v| + |b| per output channel."""
        conv_1, conv_2 = (m for m in self.layers if isinstance(m, nn.Conv2d))
        hidden = conv_1.weight.detach().double().abs().flatten(1).sum(1) * radius + conv_1.bias.detach().double().abs()
        top = conv_2.weight.detach().double().abs().sum((0, 2, 3)) @ hidden + conv_2.bias.detach().double().abs().sum()
        return float(top) + self.floor


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
    there alone, with a bound that proves r <= 0 elsewhere (`forward_sparse`), and falls back to
    the FFT for other stickers or inputs far outside the pixel range. Same values, same gradient.
    """

    def __init__(
        self,
        sticker: torch.Tensor,
        mean: tuple[float, float, float] = InputSpec.mean,
        std: tuple[float, float, float] = InputSpec.std,
        margin: float = 1e-4,
        pools: int = 4,
    ) -> None:
        super().__init__()
        s = check_sticker(sticker)
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
            self._probe_black, self._probe_white = spread_cells(black, 4), spread_cells(white, 4)
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

    def bound(self, radius: float) -> float:
        """An upper bound of F(x) for inputs with |x| <= radius: r <= sum|k| max|p| + b with
        |p| = |x std + mean| <= radius max(std) + max|mean|, and averages do not grow it."""
        pixel = radius * float(self.std.abs().max()) + float(self.mean.abs().max())
        return max(0.0, float(self.kernel.abs().sum()) * pixel + float(self.bias))

    def response_conv2d(self, x: torch.Tensor) -> torch.Tensor:
        """The same response by direct float64 conv2d (the reference the FFT path is tested against)."""
        return F.conv2d(self._pixels(x), self.kernel, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """F(x) = avgpool^pools(ReLU(r)), B x H' x W' in float64."""
        if self._sparse and x.dim() == 4 and x.shape[1] == 3:
            out = self.forward_sparse(x)
            if out is not None:
                return out
        return self.forward_dense(x)

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.response(x))
        for _ in range(self.pools):
            out = F.avg_pool2d(out, 2)
        return out[:, 0]

    def forward_sparse(self, x: torch.Tensor, max_candidates_per_image: int = 4096) -> torch.Tensor | None:
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


def spread_cells(cells: list[list[int]], count: int) -> list[tuple[int, int]]:
    """`count` of the (row, col) cells, evenly spaced in row-major order."""
    steps = torch.linspace(0, len(cells) - 1, min(count, len(cells)))
    return [tuple(cells[int(round(float(t)))]) for t in steps]


def check_sticker(sticker: torch.Tensor) -> torch.Tensor:
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
