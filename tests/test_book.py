"""lie_cam.book.setup: one set-up for every chapter, the profile from one environment variable."""

import pytest
import torch

from lie_cam import book
from lie_cam.data import CLASS_NAMES, synthetic_split


def test_setup_defaults_to_the_embedded_profile(monkeypatch):
    monkeypatch.delenv(book.PROFILE_VARIABLE, raising=False)
    ch = book.setup(n=3, device="cpu")
    x, labels, masks = synthetic_split("test", 3)
    assert ch.profile == "embedded" and ch.embedded
    assert torch.equal(ch.x, x) and torch.equal(ch.labels, labels) and torch.equal(ch.masks, masks)
    assert not ch.model.training
    assert ch.name(int(labels[0])) == CLASS_NAMES[int(labels[0])]
    assert "3 images of profile 'embedded'" in repr(ch)


def test_the_profile_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(book.PROFILE_VARIABLE, "ImageNet")
    assert book.current_profile() == "imagenet"
    monkeypatch.setenv("LIE_CAM_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="ImageNet"):
        book.setup(n=2, device="cpu")  # the imagenet profile, as the variable says, and its data is missing
    monkeypatch.setenv(book.PROFILE_VARIABLE, "cifar")
    with pytest.raises(ValueError, match="LIE_CAM_PROFILE='cifar'.*embedded"):
        book.current_profile()


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_setup_refuses_a_bad_number_of_images(n):
    with pytest.raises(ValueError, match="positive number of images"):
        book.setup(n=n, profile="embedded")


def test_imagenet_class_names_are_names():
    names = book.imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[207] == "golden retriever"
