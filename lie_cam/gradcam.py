"""Grad-CAM (Selvaraju et al. 2017) as the paper's Eq. 1-2 define it.

For a class c with pre-softmax score y_c and the activations A (B x K x H x W)
of the last convolutional layer after its ReLU, before pooling:

    alpha_k = 1/N_A * sum_ij dy_c / dA^k_ij                    (Eq. 2)
    I       = ReLU( sum_k alpha_k A^k )                         (Eq. 1)
    I~      = I / max_ij I      (an all-zero map stays all zero)

`gradient` names the gradient in Eq. 2:

    "eq2"     dy_c/dA^k_ij taken after the ReLU that makes A, as Eq. 2 writes it (and as captum
              and pytorch-grad-cam compute it). The default.
    "masked"  dy_c/dA^k_ij * 1[A^k_ij > 0], the gradient of the authors' code, whose hook sits on
              conv5_3's output *before* VGG's in-place ReLU (the ReLU's derivative is 0 where A = 0).
              The paper's table numbers were made with it.

The two differ only where A^k_ij = 0 while dy_c/dA^k_ij != 0: in a VGG, a 2 x 2 max-pool window
whose four values are all 0 still routes its gradient to one of them.

Gradients are computed only from the scores down to A: the trunk below A runs
without autograd, no parameter gradient is formed, and the backward pass covers
the head alone.
"""

from __future__ import annotations

import contextlib
import numbers
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "GradCAMResult",
    "gradcam",
    "head_gradcam",
    "trainable_maps",
    "target_layer",
    "normalize_maps",
    "upsample",
    "resolve_targets",
    "check_finite",
    "GRADIENTS",
    "check_gradient",
    "non_finite_weights",
]

GRADIENTS = ("eq2", "masked")  # Eq. 2 as written; the authors' code (masked where A = 0)


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

    Manipulated models from `lie_cam.attacks` expose it as `model.explained_layer`
    (their (K+1)-th channel is part of its output). For torchvision VGG models it is
    the ReLU right after the last Conv2d of `model.features` (and its BatchNorm2d in vgg*_bn). For torchvision ResNets (any
    depth or width: `layer4` an nn.Sequential of blocks, then `avgpool` and `fc`) it is the
    last block, whose output ReLU(F(h) + shortcut(h)) is A.
    """
    explained = getattr(model, "explained_layer", None)
    if isinstance(explained, nn.Module):
        return explained
    stage = getattr(model, "layer4", None)
    if isinstance(stage, nn.Sequential) and isinstance(getattr(model, "fc", None), nn.Linear):
        if len(stage) == 0:
            raise TypeError("expected model.layer4 (a torchvision ResNet's last stage) to hold at least one block")
        return stage[-1]
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        modules = list(features)
        conv_positions = [i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d)]
        if conv_positions:
            after = conv_positions[-1] + 1
            while after < len(modules) and isinstance(modules[after], nn.BatchNorm2d):  # vgg*_bn
                after += 1
            if after < len(modules) and isinstance(modules[after], nn.ReLU):
                return modules[after]
            raise TypeError(
                "expected the last Conv2d of model.features to be followed by a ReLU (after a BatchNorm2d in "
                f"vgg*_bn; torchvision VGG layout), found {type(modules[after]).__name__ if after < len(modules) else 'nothing'}"
            )
    raise TypeError(
        f"cannot find Grad-CAM's layer in a {type(model).__name__}: expected a torchvision VGG "
        "(a `features` nn.Sequential whose last Conv2d is followed by a ReLU), a torchvision ResNet "
        "(`layer4` and `fc`) or a model from "
        "lie_cam.attacks; pass layer=... to name the module whose output is A, or pass the model in parts: "
        "lie_cam.models.from_parts(features, head, preprocess=InputSpec(side, mean, std))"
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
        # A non-leaf view of A goes on, so a following in-place op (VGG's ReLU(inplace=True)
        # after a Conv2d) modifies that copy, not the leaf whose gradient is Eq. 2's.
        return leaf.clone()

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
    """Class index per sample: each sample's argmax by default, else the given target(s):
    one int for the whole batch, or one integer class per sample (a sequence, numpy array or
    integer tensor). Floats and booleans are refused rather than truncated."""
    batch, n_classes = logits.shape
    if target is None:
        return logits.argmax(dim=1)
    expected = (f"target must be None, an int, or one integer class per sample ({batch} of them) in "
                f"[0, {n_classes})")
    if isinstance(target, bool):
        raise TypeError(f"{expected}; got the bool {target}")
    if isinstance(target, numbers.Integral):
        classes = torch.full((batch,), int(target), dtype=torch.long, device=logits.device)
    else:
        if isinstance(target, (str, bytes)) or not hasattr(target, "__len__") and not hasattr(target, "shape"):
            raise TypeError(f"{expected}; got {type(target).__name__}")
        try:
            values = torch.as_tensor(target if isinstance(target, torch.Tensor) else np.asarray(target))
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"{expected}; got {type(target).__name__} ({error})") from None
        if values.dtype == torch.bool or values.is_floating_point() or values.is_complex():
            raise TypeError(f"{expected}; got {str(values.dtype).replace('torch.', '')} values {values.flatten()[:8].tolist()}")
        if values.dim() > 1 or values.numel() != batch:
            raise ValueError(f"{expected}; got shape {tuple(values.shape)} for a batch of {batch}")
        classes = values.reshape(-1).to(device=logits.device, dtype=torch.long)
    if ((classes < 0) | (classes >= n_classes)).any():
        raise ValueError(f"target classes must lie in [0, {n_classes}), got {classes.tolist()}")
    return classes


def _check_eval(model: nn.Module, allow_training: bool) -> None:
    if model.training and not allow_training:
        raise ValueError(
            f"{type(model).__name__} is in training mode: dropout and batch statistics make its scores, "
            "and so Grad-CAM, change from call to call. Call model.eval() first "
            "(or pass allow_training=True if that is what you want)")


def non_finite_weights(model: object) -> list[str]:
    """The names of `model`'s parameters and buffers holding NaN or infinity ([] for a callable that is
    not an nn.Module or the bound method of one, such as `ManipulatedModel.head`)."""
    module = model if isinstance(model, nn.Module) else getattr(model, "__self__", None)
    if not isinstance(module, nn.Module):
        return []
    named = [*module.named_parameters(), *module.named_buffers()]
    return [name for name, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _check_scores(logits: torch.Tensor, model: object = None) -> None:
    """ValueError if the scores are not finite: naming the model's non-finite weights when it has any,
    else the likely overflow of the input."""
    if not bool(torch.isfinite(logits).all()):
        bad = non_finite_weights(model)
        if bad:
            raise ValueError(
                f"the model's scores are not finite because its weights are not: {', '.join(bad[:5])}"
                f"{f' (and {len(bad) - 5} more)' if len(bad) > 5 else ''} hold NaN or infinite values. "
                "Expected finite weights: check the model file or what modified the model")
        raise ValueError(
            "the model's scores are not finite for this input (an overflow inside the network, e.g. inputs near "
            f"the limit of {str(logits.dtype).replace('torch.', '')}): Grad-CAM would be NaN. Expected normalised "
            "images (values of order 1); try float64 or smaller inputs")


def check_gradient(gradient: str) -> str:
    """`gradient` if it names one of `GRADIENTS`, else ValueError naming the argument."""
    if not isinstance(gradient, str) or gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {GRADIENTS} ('eq2': Eq. 2 as written; 'masked': the authors' "
                         f"code, dy/dA * 1[A > 0]), got {gradient!r}")
    return gradient


def _cam(grad: torch.Tensor, activations: torch.Tensor, gradient: str = "eq2") -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_k = mean_ij dy_c/dA^k_ij (Eq. 2; gradient="masked": mean_ij dy_c/dA^k_ij 1[A^k_ij > 0])
    and I = ReLU(sum_k alpha_k A^k) (Eq. 1)."""
    if gradient == "masked":
        grad = grad * (activations.detach() > 0)
    alpha = grad.mean(dim=(2, 3))
    maps = torch.relu(torch.einsum("bk,bkhw->bhw", alpha, activations.detach()))
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("Grad-CAM's map is not finite (the gradient or A overflowed): try float64")
    return alpha, maps


def head_gradcam(
    head: Callable[[torch.Tensor], torch.Tensor],
    activations: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    gradient: str = "eq2",
) -> GradCAMResult:
    """Grad-CAM from A itself: y = head(A), dy_c/dA by a backward through the head only.

    For callers that already hold A (B x K x H x W), such as `lie_cam.experiments.engine`, which runs the
    trunk once for several networks; `gradcam` is this with A taken from a forward hook.
    gradient: "eq2" (default) or "masked" (the authors' code), as for `gradcam`.
    """
    check_gradient(gradient)
    if not isinstance(activations, torch.Tensor) or activations.dim() != 4:
        raise ValueError(f"expected A of shape B x K x H x W, got {getattr(activations, 'shape', type(activations))}")
    with torch.enable_grad():
        leaf = activations.detach().requires_grad_(True)
        logits = head(leaf)
        _check_scores(logits, head)
        classes = resolve_targets(target, logits)
        (grad,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), leaf)
    alpha, maps = _cam(grad, leaf, gradient)
    return GradCAMResult(maps=maps, logits=logits.detach(), classes=classes, alpha=alpha)


def trainable_maps(head: Callable[[torch.Tensor], torch.Tensor], activations: torch.Tensor,
                   classes: torch.Tensor, relu: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM's maps I = ReLU(sum_k alpha_k A^k) (Eq. 1-2, gradient "eq2") as a differentiable
    function of the weights, for training through the explanation: (maps B x H x W, logits B x C).

    alpha_k = 1/N_A sum_ij dy_c/dA^k_ij is computed with create_graph=True, so a loss on the maps
    back-propagates into the head's weights through alpha (a double backward through the head:
    dy_c/dA is a product of the head's weight matrices and its ReLU masks, smooth in the weights and
    piecewise constant in A) and into whatever made `activations` through A^k. `activations` must be
    part of the caller's graph (requires_grad); `classes` holds one class per sample. relu=False returns
    sum_k alpha_k A^k before Eq. 1's ReLU (a loss that must raise cells where it is negative needs it)."""
    if not activations.requires_grad:
        raise ValueError("activations must require grad (the output of trainable layers, or a leaf with "
                         "requires_grad=True): the maps are differentiated through them")
    logits = head(activations)
    score = logits.gather(1, classes.reshape(-1, 1).to(logits.device)).sum()
    (grad,) = torch.autograd.grad(score, activations, create_graph=True)
    alpha = grad.mean(dim=(2, 3))
    maps = torch.einsum("bk,bkhw->bhw", alpha, activations)
    return (torch.relu(maps) if relu else maps), logits


def gradcam(
    model: nn.Module,
    x: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    layer: nn.Module | None = None,
    allow_training: bool = False,
    gradient: str = "eq2",
) -> GradCAMResult:
    """Batched Grad-CAM of `model` on `x` (B x 3 x H x W, already normalised).

    target: None (each sample's own argmax), one int for all, or one integer class per sample.
    layer:  the module whose output is A; default `target_layer(model)`. Any module that outputs
            B x K x H x W works, a Conv2d followed by an in-place ReLU included.
    The model must be in eval mode (dropout would make the scores random), unless allow_training.
    gradient: "eq2" (default): alpha_k = mean_ij dy_c/dA^k_ij, Eq. 2 with the gradient after A's ReLU;
            "masked": alpha_k = mean_ij dy_c/dA^k_ij * 1[A^k_ij > 0], the authors' code (their hook on
            the conv output before the ReLU), behind the paper's table numbers. See the module docstring.
    """
    check_gradient(gradient)
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"expected an input batch B x C x H x W (a torch.Tensor), got "
                         f"{type(x).__name__}{' of shape ' + str(tuple(x.shape)) if hasattr(x, 'shape') else ''}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point input batch (normalised images), got {x.dtype}")
    check_finite(x)
    _check_eval(model, allow_training)
    layer = target_layer(model) if layer is None else layer
    store: dict = {}
    with _gradient_from(layer, store):
        logits = model(x)
        if "A" not in store:
            raise RuntimeError(f"the layer {type(layer).__name__} did not run in the model's forward")
        _check_scores(logits, model)
        activations = store["A"]
        classes = resolve_targets(target, logits)
        score = logits.gather(1, classes[:, None]).sum()
        (grad,) = torch.autograd.grad(score, activations)
    alpha, maps = _cam(grad, activations, gradient)
    return GradCAMResult(maps=maps, logits=logits.detach(), classes=classes, alpha=alpha)
