"""Evaluate the original network and its manipulations together, sharing what they share.

All four manipulations leave everything below the last conv layer untouched, and the
first K filters of that layer are the original ones. So per batch the engine runs
    h   = trunk(x)                       once                (the expensive part)
    pre = conv_{1..K}(h)                 once                (the original last conv)
and per network only the rest, which the manipulated model computes itself:
    A = network.activations_from(h, x, original_pre=pre)     (the (K+1)-th channel, T2's image
    or T3/T4's branch), then Grad-CAM from A with a backward through the head only
    (`lie_cam.gradcam.head_gradcam`). `run_split` evaluates two batches held in one tensor (clean
and stickered images) in one trunk pass, each network on the part it is asked for.
Results equal evaluating each network on its own with `lie_cam.gradcam` (tests pin this).
`gradient` ("eq2", the default, or "masked", the authors' code) picks Eq. 2's gradient for every
network, as `lie_cam.gradcam.gradcam` documents.

Networks the engine cannot share a trunk with are evaluated on their own with a full
forward (`lie_cam.gradcam.gradcam`): all of them when the original is not a torchvision VGG,
and any network without `activations_from` (a model from another surgery, or any nn.Module).
Their `.extra` is None.

Reduced precision (`autocast_dtype=torch.bfloat16` or float16, CUDA or CPU): the trunk and
the original last conv run under autocast, while everything whose constants exceed the
reduced dtype's range or resolution stays in float32/float64: the extra channel (c_A, c_I I_T),
the branches (c_F F(x); the T4 detector is float64 anyway), the first FC layer with its
folded bias (b_o - c_A c_W N_Z) and the mod branch G. The heads run in float32. Networks
evaluated on their own run without autocast (their constants are not known to be safe).
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Mapping

import torch
from torch import nn

from lie_cam.anatomy import Cut, cut_at_a
from lie_cam.gradcam import GradCAMResult, check_finite, check_gradient, gradcam, head_gradcam

__all__ = ["Evaluator", "evaluate_separately"]


def _original_cut(model: nn.Module) -> Cut | None:
    """The original VGG cut at A (`lie_cam.anatomy.cut_at_a`), or None when it is not a torchvision VGG:
    a ResNet's manipulated copies take the last block's output whole, not a shared conv's first K
    filters, so there every network is evaluated on its own."""
    try:
        cut = cut_at_a(model)
    except TypeError:
        return None
    return cut if isinstance(cut.pre, nn.Conv2d) else None


def _shares_trunk(original: Cut, network: nn.Module) -> bool | None:
    """Whether the network runs on the original's trunk output: True (same trunk and first K
    filters), False (a VGG-shaped manipulated model built from another original), or None when
    it does not compute A from a trunk output (no `activations_from`, `head`, `trunk`, `last_conv`)."""
    if not all(callable(getattr(network, name, None)) for name in ("activations_from", "head")):
        return None
    trunk, conv = getattr(network, "trunk", None), getattr(network, "last_conv", None)
    if not isinstance(trunk, nn.Module) or not isinstance(conv, nn.Conv2d):
        return None
    ours, theirs = list(original.trunk.state_dict().values()), list(trunk.state_dict().values())
    if len(ours) != len(theirs) or not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(ours, theirs)):
        return False
    k = original.pre.out_channels
    if conv.out_channels <= k or conv.in_channels != original.pre.in_channels:
        return False
    same = torch.equal(conv.weight[:k], original.pre.weight)
    if original.pre.bias is not None:
        same = same and conv.bias is not None and torch.equal(conv.bias[:k], original.pre.bias)
    return bool(same)


def _slice(result: GradCAMResult, rows: slice) -> GradCAMResult:
    return GradCAMResult(maps=result.maps[rows], logits=result.logits[rows], classes=result.classes[rows],
                         alpha=result.alpha[rows], extra=None if result.extra is None else result.extra[rows])


class Evaluator:
    """The original network and manipulated copies of it, evaluated with one trunk pass.

    networks: a mapping name -> model, normally built from `original` by `lie_cam.attacks`.
    `run(x)` returns {"original": GradCAMResult, name: GradCAMResult, ...} with each network's
    logits, explained classes (each network's own argmax), raw maps, and for the networks on the
    shared trunk `.extra` = A^{K+1}, whose normalised value is the technique's target explanation.
    `shared` / `alone` name the networks evaluated on the shared trunk and on their own.
    gradient: Eq. 2's gradient for every network, "eq2" (default) or "masked" (the authors' code).
    """

    def __init__(self, original: nn.Module, networks: Mapping[str, nn.Module],
                 autocast_dtype: torch.dtype | None = None, gradient: str = "eq2") -> None:
        self.gradient = check_gradient(gradient)
        if "original" in networks:
            raise ValueError("'original' is reserved for the unmanipulated network")
        if autocast_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"autocast_dtype must be None, torch.bfloat16 or torch.float16, got {autocast_dtype}")
        if not isinstance(original, nn.Module):
            raise TypeError(f"original: expected an nn.Module, got {type(original).__name__}")
        self.original = original
        self.parts = _original_cut(original)
        self.shared: list[str] = []
        self.alone: list[str] = []
        for name, network in networks.items():
            if not isinstance(network, nn.Module):
                raise TypeError(f"{name}: expected an nn.Module (a model from lie_cam.attacks), "
                                f"got {type(network).__name__}")
            shares = None if self.parts is None else _shares_trunk(self.parts, network)
            if shares is False:
                raise ValueError(f"{name} does not share the original's trunk and last conv filters: "
                                 "build it from this original with lie_cam.attacks")
            (self.shared if shares else self.alone).append(name)
        self.networks = dict(networks)
        self.autocast_dtype = autocast_dtype

    @property
    def names(self) -> list[str]:
        return ["original", *self.networks]

    def _autocast(self, x: torch.Tensor):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype)

    def _check(self, x: torch.Tensor, names: Iterable[str] | None) -> list[str]:
        names = self.names if names is None else list(names)
        unknown = set(names) - set(self.names)
        if unknown:
            raise ValueError(f"unknown networks {sorted(unknown)}; known: {self.names}")
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"expected a B x 3 x H x W batch, got {tuple(getattr(x, 'shape', ()))}")
        check_finite(x)
        return names

    def run(self, x: torch.Tensor, names: Iterable[str] | None = None, target=None) -> dict[str, GradCAMResult]:
        """Grad-CAM of every network in `names` (default: all, "original" first) on the batch x."""
        names = self._check(x, names)
        return self._evaluate(x, {name: slice(None) for name in names}, target)

    def run_split(self, x: torch.Tensor, split: int, first_names: Iterable[str] | None = None,
                  second_names: Iterable[str] | None = None) -> tuple[dict[str, GradCAMResult], dict[str, GradCAMResult]]:
        """`run(x[:split], first_names)` and `run(x[split:], second_names)` from one trunk pass over x
        (the reproduction's clean and stickered images, one batch after the other); a network asked
        for on both parts evaluates its head once on all of x. Same results as two `run` calls."""
        first_names = self._check(x, first_names)
        second_names = self._check(x, second_names)
        if isinstance(split, bool) or not isinstance(split, int) or not 0 < split < x.shape[0]:
            raise ValueError(f"split must be an int in (0, {x.shape[0]}) for a batch of {x.shape[0]}, got {split!r}")
        rows: dict[str, slice] = {}
        for name in self.names:
            in_first, in_second = name in first_names, name in second_names
            if in_first or in_second:
                rows[name] = slice(None) if in_first and in_second else slice(0, split) if in_first else slice(split, None)
        results = self._evaluate(x, rows, None)
        parts = []
        for names, part in ((first_names, slice(0, split)), (second_names, slice(split, None))):
            parts.append({name: _slice(results[name], part) if rows[name] == slice(None) else results[name]
                          for name in names})
        return parts[0], parts[1]

    def _evaluate(self, x: torch.Tensor, rows: dict[str, slice], target) -> dict[str, GradCAMResult]:
        """Each network in `rows` (in that order) on its rows x[rows[name]]."""
        results: dict[str, GradCAMResult] = {}
        shared = [name for name in rows if name in self.shared or (name == "original" and self.parts is not None)]
        if shared:
            cover = _covering(rows, shared, x.shape[0])
            h, pre = self._trunk(x[cover])
        for name, part in rows.items():
            if name in shared:
                local = slice((part.start or 0) - cover.start, None if part.stop is None else part.stop - cover.start)
                results[name] = self._shared(name, h[local], pre[local], x[part], target)
            else:
                network = self.original if name == "original" else self.networks[name]
                results[name] = gradcam(network, x[part], target=target, gradient=self.gradient)
        return results

    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h = trunk(x) and pre = conv_{1..K}(h) of the original (a ResNet: its last block), in its dtype."""
        p = self.parts
        with torch.no_grad():
            with self._autocast(x):
                h = p.trunk(x)
                pre = p.pre(h)
            work_dtype = next(p.pre.parameters()).dtype
            return h.to(work_dtype), pre.to(work_dtype)

    def _shared(self, name: str, h: torch.Tensor, pre: torch.Tensor, x: torch.Tensor, target) -> GradCAMResult:
        if name == "original":
            with torch.no_grad():
                a = self.parts.activation(pre.clone())  # the ReLU may work in place: pre is shared
            return head_gradcam(self.parts.head, a, target, gradient=self.gradient)
        network = self.networks[name]
        with torch.no_grad():
            a = network.activations_from(h, x, original_pre=pre)
        result = head_gradcam(network.head, a, target, gradient=self.gradient)
        result.extra = a[:, -1]
        return result


def _covering(rows: dict[str, slice], names: list[str], batch: int) -> slice:
    """The smallest range of rows that holds every named network's rows."""
    starts = [rows[name].start or 0 for name in names]
    stops = [batch if rows[name].stop is None else rows[name].stop for name in names]
    return slice(min(starts), max(stops))


def evaluate_separately(original: nn.Module, networks: Mapping[str, nn.Module], x: torch.Tensor,
                        names: Iterable[str] | None = None, gradient: str = "eq2") -> dict[str, GradCAMResult]:
    """The naive baseline: every network on its own with `lie_cam.gradcam` (a full forward each)."""
    everything = {"original": original, **networks}
    names = list(everything) if names is None else list(names)
    return {name: gradcam(everything[name], x, gradient=gradient) for name in names}
