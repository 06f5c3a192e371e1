"""Evaluate the original network and its manipulations together, sharing what they share.

All four manipulations leave everything below the last conv layer untouched, and the
first K filters of that layer are the original ones. So per batch the engine runs
    h   = trunk(x)                       once                (the expensive part)
    a_K = ReLU(conv_K(h))                once                (the original A)
and per network only the cheap rest:
    A   = [a_K, ReLU(w_{K+1} * h + b_{K+1})] -> explained_layer(., x)   (the extra channel, T2's
          image or T3/T4's branch), y = head(A), and Grad-CAM with a backward through the head only.
Results equal evaluating each network on its own with `lie_cam.gradcam` (tests pin this).

Reduced precision (`autocast_dtype=torch.bfloat16` or float16, CUDA or CPU): the trunk and
the original last conv run under autocast, while everything whose constants exceed the
reduced dtype's range or resolution stays in float32/float64: the extra channel (c_A, c_I I_T),
the branches (c_F F(x); the T4 detector is float64 anyway), the first FC layer with its
folded bias (b_o - c_A c_W N_Z) and the mod branch G. The heads run in float32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
from torch import nn

from lie_cam.gradcam import GradCAMResult, check_finite, head_gradcam
from lie_cam.surgery import ManipulatedVGG, pool_for_classifier, split_vgg

__all__ = ["Evaluator", "evaluate_separately"]


@dataclass
class _OriginalParts:
    trunk: nn.Sequential
    conv: nn.Conv2d
    relu: nn.Sequential  # batch norm (if any) and the ReLU
    head_features: nn.Sequential
    avgpool: nn.Module
    classifier: nn.Module


def _original_parts(model: nn.Module) -> _OriginalParts:
    parts = split_vgg(model)  # references into `model`, nothing copied
    return _OriginalParts(
        trunk=nn.Sequential(*parts.trunk),
        conv=parts.last_conv,
        relu=nn.Sequential(*parts.between, parts.last_relu),
        head_features=nn.Sequential(*parts.tail),
        avgpool=parts.avgpool,
        classifier=model.classifier,
    )


def _same_trunk(original: _OriginalParts, manipulated: ManipulatedVGG) -> bool:
    ours = list(original.trunk.state_dict().values())
    theirs = list(manipulated.trunk.state_dict().values())
    if len(ours) != len(theirs) or not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(ours, theirs)):
        return False
    k = original.conv.out_channels
    same_conv = torch.equal(manipulated.last_conv.weight[:k], original.conv.weight)
    if original.conv.bias is not None:
        same_conv = same_conv and torch.equal(manipulated.last_conv.bias[:k], original.conv.bias)
    return bool(same_conv) and len(list(manipulated.last_relu.children())) == 1 + len(list(original.relu.children())) - 1


class Evaluator:
    """The original network and manipulated copies of it, evaluated with one trunk pass.

    networks: a mapping name -> ManipulatedVGG built from `original` by `lie_cam.surgery`.
    `run(x)` returns {"original": GradCAMResult, name: GradCAMResult, ...} with each network's
    logits, explained classes (each network's own argmax), raw maps, and for the manipulated
    ones `.extra` = A^{K+1}, whose normalised value is the technique's target explanation.
    """

    def __init__(self, original: nn.Module, networks: Mapping[str, ManipulatedVGG],
                 autocast_dtype: torch.dtype | None = None) -> None:
        self.original = original
        self.parts = _original_parts(original)
        for name, network in networks.items():
            if not isinstance(network, ManipulatedVGG):
                raise TypeError(f"{name}: expected a model from lie_cam.surgery, got {type(network).__name__}")
            if not _same_trunk(self.parts, network):
                raise ValueError(f"{name} does not share the original's trunk and last conv filters: "
                                 "build it from this original with lie_cam.surgery")
        if "original" in networks:
            raise ValueError("'original' is reserved for the unmanipulated network")
        if autocast_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"autocast_dtype must be None, torch.bfloat16 or torch.float16, got {autocast_dtype}")
        self.networks = dict(networks)
        self.autocast_dtype = autocast_dtype

    @property
    def names(self) -> list[str]:
        return ["original", *self.networks]

    def _autocast(self, x: torch.Tensor):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype)

    def _original_head(self, a: torch.Tensor) -> torch.Tensor:
        p = self.parts
        return p.classifier(torch.flatten(pool_for_classifier(p.avgpool, p.head_features(a)), 1))

    def run(self, x: torch.Tensor, names: Iterable[str] | None = None, target=None) -> dict[str, GradCAMResult]:
        names = self.names if names is None else list(names)
        unknown = set(names) - set(self.names)
        if unknown:
            raise ValueError(f"unknown networks {sorted(unknown)}; known: {self.names}")
        if x.dim() != 4:
            raise ValueError(f"expected a B x 3 x H x W batch, got {tuple(x.shape)}")
        check_finite(x)
        p = self.parts
        with torch.no_grad():
            with self._autocast(x):
                h = p.trunk(x)
                pre = p.conv(h)
            work_dtype = p.conv.weight.dtype
            h, pre = h.to(work_dtype), pre.to(work_dtype)
            a_original = p.relu(pre.clone())
        results: dict[str, GradCAMResult] = {}
        for name in names:
            if name == "original":
                results[name] = head_gradcam(self._original_head, a_original, target)
                continue
            network = self.networks[name]
            with torch.no_grad():
                a = network.activations_from(h, x, original_pre=pre)
            results[name] = head_gradcam(network.head, a, target)
            results[name].extra = a[:, -1]
        return results


def evaluate_separately(original: nn.Module, networks: Mapping[str, nn.Module], x: torch.Tensor,
                        names: Iterable[str] | None = None) -> dict[str, GradCAMResult]:
    """The naive baseline: every network on its own with `lie_cam.gradcam` (a full forward each)."""
    from lie_cam.gradcam import gradcam

    everything = {"original": original, **networks}
    names = list(everything) if names is None else list(names)
    return {name: gradcam(everything[name], x) for name in names}
