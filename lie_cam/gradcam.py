"""Grad-CAM (Selvaraju et al. 2017) as the paper's Eq. 1-2 define it.

For a class c with pre-softmax score y_c and the activations A (B x K x H x W)
of the last convolutional layer after its ReLU, before pooling:

    alpha_k = 1/N_A * sum_ij dy_c / dA^k_ij                    (Eq. 2)
    I       = ReLU( sum_k alpha_k A^k )                         (Eq. 1)
    I~      = I / max_ij I      (an all-zero map stays all zero)

Gradients are computed only from the scores down to A: the trunk below A runs
without autograd, no parameter gradient is formed, and the backward pass covers
the head alone.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "GradCAMResult",
    "gradcam",
    "target_layer",
    "normalize_maps",
    "upsample",
    "resolve_targets",
    "check_finite",
]


@dataclass
class GradCAMResult:
    """Raw maps at feature resolution and what produced them.

    maps:       B x H x W, I = ReLU(sum_k alpha_k A^k)
    normalized: B x H x W, I / max I (zero where I is all zero)
    logits:     B x C pre-softmax scores of the explained model
    classes:    B explained class indices
    alpha:      B x K channel weights alpha_k (Eq. 2)
    extra:      B x H x W, A^{K+1} of a manipulated network when the evaluator kept it, else None
    """

    maps: torch.Tensor
    logits: torch.Tensor
    classes: torch.Tensor
    alpha: torch.Tensor
    extra: torch.Tensor | None = None

    @property
    def normalized(self) -> torch.Tensor:
        return normalize_maps(self.maps)


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """I~ = I / max_ij I per map; a map whose maximum is 0 stays 0 (never NaN)."""
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    return torch.where(peak > 0, maps / torch.where(peak > 0, peak, torch.ones_like(peak)), torch.zeros_like(maps))


def upsample(maps: torch.Tensor, size: int | tuple[int, int] = 224) -> torch.Tensor:
    """Bilinearly upsample B x H x W maps to `size` for display and overlays (not for metrics)."""
    if maps.dim() != 3:
        raise ValueError(f"expected maps of shape B x H x W, got {tuple(maps.shape)}")
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def target_layer(model: nn.Module) -> nn.Module:
    """The module whose output is A: the last conv layer's activations after its ReLU.

    Manipulated models from `lie_cam.surgery` expose it as `model.explained_layer`
    (their (K+1)-th channel is part of its output). For torchvision VGG models it is
    the ReLU right after the last Conv2d of `model.features`.
    """
    explained = getattr(model, "explained_layer", None)
    if isinstance(explained, nn.Module):
        return explained
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        modules = list(features)
        conv_positions = [i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d)]
        if conv_positions:
            last = conv_positions[-1]
            if last + 1 < len(modules) and isinstance(modules[last + 1], nn.ReLU):
                return modules[last + 1]
            raise TypeError(
                "expected the last Conv2d of model.features to be followed by a ReLU "
                f"(torchvision VGG layout), found {type(modules[last + 1]).__name__ if last + 1 < len(modules) else 'nothing'}"
            )
    raise TypeError(
        f"cannot find Grad-CAM's layer in a {type(model).__name__}: expected a torchvision VGG "
        "(a `features` nn.Sequential whose last Conv2d is followed by a ReLU) or a model from "
        "lie_cam.surgery; pass layer=... to name the module whose output is A"
    )


@contextlib.contextmanager
def _gradient_from(layer: nn.Module, store: dict) -> Iterator[None]:
    """Run a forward without autograd below `layer`, and with it from `layer`'s output on.

    The forward hook swaps the layer's output for a detached leaf that requires grad,
    so autograd records the head only. The hook is removed and the grad mode restored
    on exit, also when the forward raises.
    """

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise TypeError(f"Grad-CAM's layer must output a B x K x H x W tensor, got {type(output).__name__}"
                            + (f" of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else ""))
        if "A" in store:
            raise RuntimeError("Grad-CAM's layer ran twice in one forward; name a layer that runs once")
        torch.set_grad_enabled(True)
        leaf = output.detach().requires_grad_(True)
        store["A"] = leaf
        return leaf

    previous = torch.is_grad_enabled()
    handle = layer.register_forward_hook(hook)
    try:
        torch.set_grad_enabled(False)
        yield
    finally:
        handle.remove()
        torch.set_grad_enabled(previous)


def check_finite(x: torch.Tensor) -> None:
    """ValueError if x holds NaN or infinity. The sum is a cheap first test (NaN and inf
    propagate through it); only if it is not finite are the elements checked one by one."""
    if not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
        raise ValueError("input contains NaN or infinite values")


def resolve_targets(
    target: int | Sequence[int] | torch.Tensor | None, logits: torch.Tensor
) -> torch.Tensor:
    """Class index per sample: each sample's argmax by default, else the given target(s)."""
    batch, n_classes = logits.shape
    if target is None:
        return logits.argmax(dim=1)
    if isinstance(target, int):
        classes = torch.full((batch,), target, dtype=torch.long, device=logits.device)
    else:
        classes = torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(-1)
        if classes.numel() != batch:
            raise ValueError(f"got {classes.numel()} targets for a batch of {batch}: give one class per sample")
    if ((classes < 0) | (classes >= n_classes)).any():
        raise ValueError(f"target classes must lie in [0, {n_classes}), got {classes.tolist()}")
    return classes


def gradcam(
    model: nn.Module,
    x: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    layer: nn.Module | None = None,
) -> GradCAMResult:
    """Batched Grad-CAM of `model` on `x` (B x 3 x H x W, already normalised).

    target: None (each sample's own argmax), one int for all, or one class per sample.
    layer:  the module whose output is A; default `target_layer(model)`.
    The model should be in eval mode (dropout would make scores random).
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"expected an input batch B x C x H x W, got {getattr(x, 'shape', type(x))}")
    check_finite(x)
    layer = target_layer(model) if layer is None else layer
    store: dict = {}
    with _gradient_from(layer, store):
        logits = model(x)
        if "A" not in store:
            raise RuntimeError(f"the layer {type(layer).__name__} did not run in the model's forward")
        activations = store["A"]
        classes = resolve_targets(target, logits)
        score = logits.gather(1, classes[:, None]).sum()
        (grad,) = torch.autograd.grad(score, activations)
    alpha = grad.mean(dim=(2, 3))
    maps = torch.relu(torch.einsum("bk,bkhw->bhw", alpha, activations.detach()))
    return GradCAMResult(maps=maps, logits=logits.detach(), classes=classes, alpha=alpha)
