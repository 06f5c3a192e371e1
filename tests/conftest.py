import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

from lie_cam.models import compact_vgg16


def small_vgg(seed: int = 0, width: float = 1 / 16, dtype: torch.dtype = torch.float32, hidden: int = 32) -> torch.nn.Module:
    """A randomly initialised narrow VGG-16 (configuration D) in eval mode."""
    torch.manual_seed(seed)
    return compact_vgg16(width=width, num_classes=10, hidden=hidden).eval().to(dtype)


def random_input(batch: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 224, 224, generator=generator).to(dtype)


@pytest.fixture
def vgg() -> torch.nn.Module:
    return small_vgg()
