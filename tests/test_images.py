"""An image that cannot be decoded is one clear error naming the file (issue 23): not an image, a
truncated JPEG, a decompression bomb, also from DataLoader worker processes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lie_cam import imagenet

WNID = "n01440764"


def _folder(tmp_path, bad_name: str, bad_bytes: bytes):
    """ROOT/val/WNID/ with one good PNG first and `bad_name` holding `bad_bytes` second."""
    folder = tmp_path / "val" / WNID
    folder.mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "a_good.png")
    (folder / bad_name).write_bytes(bad_bytes)
    return folder / bad_name


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_an_unreadable_file_from_two_workers_is_one_line_naming_it(tmp_path):
    bad = _folder(tmp_path, "b_broken.png", b"this is not a png")
    dataset = imagenet.ImageNetFolder(tmp_path)
    loader = imagenet.make_loader(dataset, batch_size=1, workers=2)
    with pytest.raises(imagenet.ImageError) as caught:
        list(loader)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message and "worker" not in message
    assert message.startswith(f"image {bad} cannot be decoded")


def test_a_truncated_jpeg_names_the_file(tmp_path):
    data = _jpeg()
    bad = _folder(tmp_path, "b_truncated.jpg", data[: len(data) // 2])
    dataset = imagenet.ImageNetFolder(tmp_path)
    dataset[0]
    with pytest.raises(imagenet.ImageError, match=rf"image {bad} cannot be decoded .*truncated"):
        dataset[1]


def test_a_decompression_bomb_names_the_file_and_the_limit(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    Image.new("RGB", (200, 200)).save(buffer, format="PNG")
    bad = _folder(tmp_path, "b_huge.png", buffer.getvalue())
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 40,000 pixels: more than twice the limit
    dataset = imagenet.ImageNetFolder(tmp_path)
    with pytest.raises(imagenet.ImageError, match=rf"image {bad} is too large.*MAX_IMAGE_PIXELS = 20000 pixels"):
        dataset[1]


def test_the_command_line_prints_one_line(tmp_path, capsys, monkeypatch):
    """The reproduction's data path, as `python -m lie_cam reproduce --profile imagenet --workers 2` runs it
    (the model is a stand-in: torchvision's VGG-16 weights need the network)."""
    import torch

    from lie_cam.cli import main
    from lie_cam.experiments import reproduce
    from lie_cam.models import compact_vgg16

    bad = _folder(tmp_path, "0_broken.jpg", b"\xff\xd8 not a jpeg")  # the first image: no batch is evaluated
    torch.manual_seed(0)
    monkeypatch.setattr(reproduce, "load_model", lambda *a, **k: compact_vgg16(width=1 / 32, num_classes=1000,
                                                                               hidden=8).eval())
    argv = ["reproduce", "--no-progress", "--device", "cpu", "--profile", "imagenet", "--data", str(tmp_path),
            "--workers", "2", "--batch-size", "1", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: image {bad} cannot be decoded"), lines
    assert "Traceback" not in lines[0] and not (tmp_path / "out").exists()
