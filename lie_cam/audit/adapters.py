"""Adapters that let third-party CAM tools run on a manipulated model without changing what it computes.

A `ManipulatedVGG` computes A = explained_layer(ReLU(conv(h)), x): the module whose output is A
takes two inputs (T3/T4's branch F needs the image x). Tools that *replace* the hooked module
(pytorch-grad-cam's AblationCAM swaps in an `AblationLayer` called with one input) then crash
with "takes 2 positional arguments but 3 were given". `ExposedA` wraps the model as

    forward(x) = head(a(activations(x))),   a = nn.Identity()

the same function y(x), with A the output of a one-input module `a` that such tools can hook or
replace. The wrapped model is shared, not copied, and never modified.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ExposedA", "expose_explained_layer"]


class ExposedA(nn.Module):
    """y = model.head(a(model.activations(x))) with `a` an identity: A as a one-input module."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not (callable(getattr(model, "head", None)) and callable(getattr(model, "activations", None))):
            raise TypeError(f"expected a model from lie_cam.attacks (with .activations(x) and .head(A)), "
                            f"got {type(model).__name__}")
        self.model = model
        self.a = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.a(self.model.activations(x)))


def expose_explained_layer(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(wrapped model, layer) to hand to a CAM tool: for a manipulated model `ExposedA(model)`
    and its identity `a`; for any other model the model itself and `lie_cam.target_layer(model)`."""
    from lie_cam.gradcam import target_layer

    if callable(getattr(model, "head", None)) and callable(getattr(model, "activations", None)):
        wrapped = ExposedA(model)
        wrapped.train(model.training)  # the same mode as the model: nothing of it changes
        return wrapped, wrapped.a
    return model, target_layer(model)
