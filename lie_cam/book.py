"""What every chapter of the book starts from: a model, a few images and their names.

    from lie_cam.book import setup
    ch = setup(n=16)        # ch.model, ch.x, ch.labels, ch.masks, ch.class_names, ch.device

The profile comes from one place, the environment variable LIE_CAM_PROFILE, so that one
setting switches every chapter: "embedded" (the default: the compact VGG-16 that ships
with the package, on synthetic scenes with object masks, offline), "imagenette" (torchvision's
VGG-16 with ImageNet weights on Imagenette, downloaded once into `lie_cam.imagenet.default_data_root()`)
or "imagenet" (the same model on a local ILSVRC2012 validation folder named by LIE_CAM_DATA).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from lie_cam.anatomy import InputSpec, input_spec
from lie_cam.profiles import DEFAULT_PROFILE, PROFILE_VARIABLE, PROFILES, check_profile

__all__ = ["PROFILE_VARIABLE", "PROFILES", "Chapter", "current_profile", "setup", "imagenet_class_names"]


@dataclass
class Chapter:
    """A chapter's material, on `device`: the honest model (eval mode, carrying its `input_spec`),
    n images normalised with that spec (n x 3 x side x side), their labels, object masks (n x 224 x 224; None for photographs),
    the class names and the profile they came from."""

    model: nn.Module
    x: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    class_names: tuple[str, ...]
    device: torch.device
    profile: str

    @property
    def spec(self) -> InputSpec:
        """The model's input spec (side, mean, std of x = (p - mean) / std): pass it to the stickers
        (`lie_cam.data.paste_stickers(..., spec=)`) and the plots (`lie_cam.plotting`, `spec=`)."""
        return input_spec(self.model)

    def name(self, c: int | torch.Tensor) -> str:
        """The name of class c."""
        return self.class_names[int(c)]

    @property
    def embedded(self) -> bool:
        """Whether this is the compact model on synthetic scenes (the offline default)."""
        return self.profile == "embedded"

    def __repr__(self) -> str:
        return (f"Chapter({type(self.model).__name__} on {self.device}, {self.x.shape[0]} images of "
                f"profile {self.profile!r})")


def current_profile() -> str:
    """The profile named by $LIE_CAM_PROFILE, "embedded" when it is unset."""
    profile = os.environ.get(PROFILE_VARIABLE, DEFAULT_PROFILE).strip().lower() or DEFAULT_PROFILE
    if profile not in PROFILES:
        raise ValueError(f"{PROFILE_VARIABLE}={os.environ[PROFILE_VARIABLE]!r} is not a profile: "
                         f"expected one of {list(PROFILES)}")
    return profile


def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order ("tench", "goldfish", ...), from torchvision."""
    from lie_cam.compat import import_torchvision

    import_torchvision()
    from torchvision.models import VGG16_Weights

    return tuple(VGG16_Weights.IMAGENET1K_V1.meta["categories"])


def setup(n: int = 16, profile: str | None = None, device: torch.device | str | None = None,
          split: str = "test") -> Chapter:
    """Load the chapter's model and its first n images of the profile (default: `current_profile()`),
    moved to `device` (default: the GPU when there is one). Each image is decoded once."""
    from lie_cam.models import try_gpu

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of images, got {n!r}")
    profile = current_profile() if profile is None else check_profile(str(profile).strip().lower())
    device = torch.device(device) if device is not None else try_gpu()
    if profile == "embedded":
        from lie_cam.data import CLASS_NAMES, synthetic_split
        from lie_cam.models import load_embedded

        model = load_embedded()
        x, labels, masks = synthetic_split(split, n)
        names: tuple[str, ...] = tuple(CLASS_NAMES)
    else:
        from lie_cam.imagenet import load_profile
        from lie_cam.models import load_vgg16

        dataset, _ = load_profile(profile, data=os.environ.get("LIE_CAM_DATA"), limit=n)
        if len(dataset) < n:
            raise ValueError(f"the {profile} profile has only {len(dataset)} images, {n} were asked for")
        items = [dataset[i] for i in range(n)]
        x = torch.stack([image for image, _ in items])
        labels = torch.tensor([label for _, label in items])
        masks = None
        model = load_vgg16()
        names = imagenet_class_names()
    model = model.to(device).eval()
    model.input_spec = input_spec(model)  # the preprocessing travels with the model (T4, stickers, plots)
    return Chapter(model=model, x=x.to(device), labels=labels.to(device),
                   masks=None if masks is None else masks.to(device), class_names=names, device=device,
                   profile=profile)
