import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

from lie_cam.models import compact_vgg16


def build_small_vgg(seed: int = 0, width: float = 1 / 16, dtype: torch.dtype = torch.float32, hidden: int = 32) -> torch.nn.Module:
    """A randomly initialised narrow VGG-16 (configuration D) in eval mode."""
    torch.manual_seed(seed)
    return compact_vgg16(width=width, num_classes=10, hidden=hidden).eval().to(dtype)


def build_random_input(batch: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A seeded batch of standard normal images, B x 3 x 224 x 224."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 224, 224, generator=generator).to(dtype)


@pytest.fixture(scope="session")
def small_vgg():
    """small_vgg(seed, width, dtype, hidden): a random narrow VGG-16 in eval mode (`build_small_vgg`)."""
    return build_small_vgg


@pytest.fixture(scope="session")
def random_input():
    """random_input(batch, seed, dtype): a seeded B x 3 x 224 x 224 batch (`build_random_input`)."""
    return build_random_input


@pytest.fixture
def vgg() -> torch.nn.Module:
    return build_small_vgg()


@pytest.fixture(scope="module")
def picture() -> torch.Tensor:
    """The first synthetic test scene, 1 x 3 x 224 x 224 (the explorers' image)."""
    from lie_cam.data import synthetic_split

    x, _, _ = synthetic_split("test", 1)
    return x


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """A random narrow VGG-16 (seed 3), the explorers' model."""
    return build_small_vgg(seed=3)
