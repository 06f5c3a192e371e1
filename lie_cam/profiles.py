"""Profiles: where a chapter's or a command's model and images come from, named once.

- "embedded": the compact models that ship in `data/` on the synthetic scenes (`lie_cam.data`), offline;
- "imagenette": torchvision's ImageNet VGG-16 on Imagenette, downloaded on first use (`lie_cam.imagenet`);
- "imagenet": the same model on a local ILSVRC2012 validation folder.

The chapters read theirs from the environment variable `PROFILE_VARIABLE` (`lie_cam.book.setup`).
A profile's model carries its preprocessing (`lie_cam.anatomy.input_spec(model)`: 224 x 224 with
ImageNet's mean and std for these three, the default `InputSpec`); `book.setup` attaches it, and the
stickers, T4's detector and the plots read it from there rather than assuming ImageNet's statistics.
"""

__all__ = ["PROFILES", "DEFAULT_PROFILE", "PROFILE_VARIABLE", "check_profile"]

PROFILES = ("embedded", "imagenette", "imagenet")
DEFAULT_PROFILE = "embedded"
PROFILE_VARIABLE = "LIE_CAM_PROFILE"


def check_profile(profile: str) -> str:
    """The profile's name, or ValueError naming the valid ones."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: expected one of {list(PROFILES)}")
    return profile
