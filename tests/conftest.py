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


def build_negative_sign_vgg(dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """A small VGG whose head has dy_c/dr_u <= 0 for every class c and FC1 unit u (FC2 >= 0, FC3 <= 0):
    alpha_{K+1} <= 0 for every class under the paper's T1/T2, as on the brain-tumour model of issue 19."""
    model = build_small_vgg(0, dtype=dtype)
    with torch.no_grad():
        model.classifier[3].weight.abs_()
        model.classifier[6].weight.copy_(-model.classifier[6].weight.abs())
    return model


@pytest.fixture(scope="session")
def negative_sign_vgg():
    """negative_sign_vgg(dtype): a small VGG on which the paper's T1/T2 have alpha_{K+1} <= 0."""
    return build_negative_sign_vgg


def randomise_batch_norms(module: torch.nn.Module, seed: int, spread: float = 0.2) -> torch.nn.Module:
    """`module` (in place, returned in eval mode) with random batch-norm weights and statistics: a
    trained-looking network, not identity batch norms."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(spread * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(spread * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return module.eval()


@pytest.fixture(scope="session")
def randomise_bn():
    """randomise_bn(module, seed, spread=0.2): random batch-norm weights and statistics, in place."""
    return randomise_batch_norms
