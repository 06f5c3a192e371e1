"""Pixel normalisation with ImageNet's channel statistics (a leaf module: no other lie_cam import).

    x = (p - mean) / std        p = x * std + mean
per channel, for pixel values p in [0, 1]. Every model here (torchvision's VGG-16 and the
embedded compact VGG-16) expects inputs normalised this way; T4's sticker detector undoes it.
"""

from __future__ import annotations

import torch

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "normalize", "denormalize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _stats(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(IMAGENET_MEAN, dtype=like.dtype, device=like.device).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=like.dtype, device=like.device).reshape(1, 3, 1, 1)
    return mean, std


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """(p - mean) / std per channel for B x 3 x H x W pixel values in [0, 1]."""
    mean, std = _stats(pixels)
    return (pixels - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Pixel values in [0, 1] from a normalised B x 3 x H x W batch (for display)."""
    mean, std = _stats(x)
    return (x * std + mean).clamp(0, 1)
