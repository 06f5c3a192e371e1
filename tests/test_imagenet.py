"""lie_cam.imagenet on tiny generated folders: no network, no real ImageNet."""

from __future__ import annotations

import pickle
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lie_cam import imagenet
from lie_cam.normalization import IMAGENET_MEAN, IMAGENET_STD

IMAGENETTE_INDICES = [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]


def _image(path: Path, size: tuple[int, int] = (300, 260), colour: tuple[int, int, int] | None = None, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if colour is not None:
        img = Image.new("RGB", size, colour)
    else:
        rng = np.random.default_rng(seed)
        img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    img.save(path, format=fmt)


def _tree(base: Path, per_class: dict[str, int]) -> None:
    sizes = [(300, 260), (260, 300), (320, 240)]
    for c, (wnid, n) in enumerate(per_class.items()):
        for i in range(n):
            suffix = [".JPEG", ".jpg", ".png"][i % 3]
            _image(base / wnid / f"img_{i:02d}{suffix}", sizes[(c + i) % 3], seed=10 * c + i)


def test_wnids_file() -> None:
    wnids = imagenet.imagenet_wnids()
    assert len(wnids) == 1000 and len(set(wnids)) == 1000
    assert wnids == sorted(wnids)
    assert wnids[0] == "n01440764" and wnids[-1] == "n15075141"
    assert imagenet.wnid_to_index()["n15075141"] == 999
    assert list(imagenet.imagenette_classes().values()) == IMAGENETTE_INDICES


def test_preprocess_uniform_colour() -> None:
    colour = (200, 100, 50)
    t = imagenet.preprocess()(Image.new("RGB", (300, 260), colour))
    assert t.shape == (3, 224, 224) and t.dtype == torch.float32
    expected = torch.tensor([(c / 255 - m) / s for c, m, s in zip(colour, IMAGENET_MEAN, IMAGENET_STD)])
    torch.testing.assert_close(t.mean(dim=(1, 2)), expected, atol=1e-5, rtol=0)
    assert float((t - expected[:, None, None]).abs().max()) < 1e-5


def test_preprocess_random_image_shape() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (500, 333, 3), dtype=np.uint8))
    t = imagenet.preprocess()(img)
    assert t.shape == (3, 224, 224) and torch.isfinite(t).all()


@pytest.mark.parametrize("layout", ["val", "flat"])
def test_folder_layouts_and_labels(tmp_path: Path, layout: str) -> None:
    base = tmp_path / "val" if layout == "val" else tmp_path
    _tree(base, {"n01440764": 2, "n15075141": 3})
    (base / "n01440764" / "notes.txt").write_text("not an image")
    ds = imagenet.ImageNetFolder(tmp_path)
    assert len(ds) == 5
    assert sorted(ds.targets) == [0, 0, 999, 999, 999]
    assert ds.targets == [0, 999, 0, 999, 999]  # interleaved by class
    x, y = ds[1]
    assert x.shape == (3, 224, 224) and y == 999
    assert all(Path(p).parent.name == imagenet.imagenet_wnids()[label] for p, label in ds.samples)


def test_limit_interleaves_classes(tmp_path: Path) -> None:
    _tree(tmp_path, {"n01440764": 3, "n02102040": 3, "n03888257": 3})
    full = imagenet.ImageNetFolder(tmp_path)
    ds = imagenet.ImageNetFolder(tmp_path, limit=4)
    assert len(ds) == 4 and ds.targets == [0, 217, 701, 0]
    assert ds.samples == full.samples[:4]
    assert imagenet.ImageNetFolder(tmp_path, limit=100).samples == full.samples
    with pytest.raises(ValueError):
        imagenet.ImageNetFolder(tmp_path, limit=0)


def test_unknown_folder(tmp_path: Path) -> None:
    _tree(tmp_path, {"n01440764": 1, "cats": 1})
    with pytest.raises(ValueError, match="n01440764"):
        imagenet.ImageNetFolder(tmp_path)


def test_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="image-net.org") as info:
        imagenet.ImageNetFolder(tmp_path / "nowhere")
    assert "--profile imagenette" in str(info.value) and "valprep" in str(info.value)
    (tmp_path / "val" / "n01440764").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="register"):
        imagenet.ImageNetFolder(tmp_path)
    with pytest.raises(FileNotFoundError, match="--profile imagenette"):
        imagenet.load_profile("imagenet")


def _imagenette_tree(root: Path, per_class: int = 1) -> None:
    _tree(root / "imagenette2-320" / "val", {w: per_class for w in imagenet.IMAGENETTE_WNIDS})
    _image(root / "imagenette2-320" / "train" / "n01440764" / "t.JPEG")  # the train split is ignored


def test_imagenette_labels(tmp_path: Path) -> None:
    _imagenette_tree(tmp_path)
    ds = imagenet.imagenette(tmp_path)
    assert len(ds) == 10 and ds.targets == IMAGENETTE_INDICES
    x, y = ds[3]
    assert x.shape == (3, 224, 224) and y == 491
    assert len(imagenet.imagenette(tmp_path / "imagenette2-320", limit=3)) == 3  # the extracted folder itself
    ds, text = imagenet.load_profile("imagenette", data=tmp_path, limit=5, download=False)
    assert len(ds) == 5 and "Imagenette" in text


def test_imagenette_missing_without_download(tmp_path: Path) -> None:
    url, md5 = imagenet.imagenette_archive("320px")
    assert url.endswith("imagenette2-320.tgz") and len(md5) == 32
    with pytest.raises(FileNotFoundError) as info:
        imagenet.imagenette(tmp_path)
    assert url in str(info.value) and "imagenette2-320" in str(info.value)


def test_imagenette_download_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lie_cam.compat import import_torchvision

    import_torchvision()
    from torchvision.datasets import utils as tv_utils

    calls = []

    def offline(url: str, download_root: str, md5: str | None = None, **kwargs: object) -> None:
        calls.append((url, md5))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(RuntimeError, match="could not download Imagenette") as info:
        imagenet.load_profile("imagenette", data=tmp_path / "dl")
    url, md5 = imagenet.imagenette_archive("320px")
    assert calls == [(url, md5)]
    assert url in str(info.value) and "tar -xz" in str(info.value)


def test_unknown_profile() -> None:
    with pytest.raises(ValueError, match="imagenette"):
        imagenet.load_profile("cifar")


@pytest.mark.parametrize("workers", [0, 2])
def test_make_loader(tmp_path: Path, workers: int) -> None:
    _tree(tmp_path, {"n01440764": 3, "n15075141": 2})
    loader = imagenet.make_loader(imagenet.ImageNetFolder(tmp_path), batch_size=2, workers=workers, device="cpu")
    assert not loader.pin_memory and loader.num_workers == workers
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(2, 3, 224, 224), (2, 3, 224, 224), (1, 3, 224, 224)]
    assert torch.cat([b[1] for b in batches]).tolist() == [0, 999, 0, 999, 0]


def test_pickles_into_a_fresh_interpreter(tmp_path: Path) -> None:
    """Spawned workers unpickle the dataset before anything imported torchvision."""
    _tree(tmp_path, {"n02102040": 1})
    blob = pickle.dumps(imagenet.ImageNetFolder(tmp_path))
    code = "import pickle, sys; x, y = pickle.loads(sys.stdin.buffer.read())[0]; print(tuple(x.shape), y)"
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=120, check=True)
    assert out.stdout.decode().strip() == "(3, 224, 224) 217"
