"""Real ImageNet data for online users (Colab): preprocessing, class index, datasets, loaders.

- `preprocess()`: the standard evaluation transform (resize 256, centre crop 224, normalise).
- `imagenet_wnids()`: the 1000 ImageNet-1k WordNet ids in standard order (index = label),
  shipped in `data/imagenet_wnids.txt`.
- `ImageNetFolder`: a local ILSVRC2012 validation set, one folder per synset.
- `imagenette()`: the 10-class Imagenette validation split (fast.ai), downloaded with an MD5 check,
  labelled with ImageNet-1k indices so that ImageNet classifiers can be scored on it.
- `make_loader()`, `load_profile()`: evaluation loaders and the "imagenette"/"imagenet" profiles.

Images are decoded with PIL (torchvision's decoders need its compiled extension), and
torchvision is imported only inside functions, through `lie_cam.compat.import_torchvision`.
"""

from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lie_cam.compat import import_torchvision
from lie_cam.profiles import PROFILES
from lie_cam.resources import data_dir
from lie_cam.normalization import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "WNIDS_FILE",
    "IMAGE_EXTENSIONS",
    "IMAGENETTE_WNIDS",
    "IMAGENET_PROFILES",
    "preprocess",
    "imagenet_wnids",
    "wnid_to_index",
    "imagenette_classes",
    "imagenette_archive",
    "ImageNetFolder",
    "ImageError",
    "load_image",
    "imagenette",
    "make_loader",
    "default_data_root",
    "load_profile",
]

WNIDS_FILE = data_dir() / "imagenet_wnids.txt"
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
IMAGENET_PROFILES = tuple(p for p in PROFILES if p != "embedded")  # the profiles served here

# The ten Imagenette synsets (tench, English springer, cassette player, chain saw, church,
# French horn, garbage truck, gas pump, golf ball, parachute); labels come from the wnid file.
IMAGENETTE_WNIDS = (
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888257",
)
# Same values as torchvision.datasets.Imagenette._ARCHIVES (torchvision >= 0.17), which is
# read first; this copy serves older torchvision versions.
_IMAGENETTE_ARCHIVES = {
    "full": ("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz", "fe2fc210e6bb7c5664d602c3cd71e612"),
    "320px": ("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz", "3df6f0d01a2c9592104656642f5e78a3"),
    "160px": ("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz", "e793b78cc4c9e9a4ccc0c1155377a412"),
}

IMAGENET_HELP = (
    "ImageNet needs a (free) registration: register at https://image-net.org/, download the "
    "ILSVRC2012 validation images (ILSVRC2012_img_val.tar, 6.3 GB), extract them and arrange them "
    "by synset, one folder per WordNet id, e.g. with the valprep.sh script "
    "(https://raw.githubusercontent.com/soumith/imagenetloader.torch/master/valprep.sh) or with "
    "torchvision.datasets.ImageNet(root, split='val') and the devkit, so that "
    "ROOT/val/n01440764/*.JPEG (or ROOT/n01440764/*.JPEG) exists. Without registration use "
    "`--profile imagenette` (10 ImageNet classes, downloaded automatically)."
)


def preprocess() -> Callable[[Image.Image], torch.Tensor]:
    """Standard ImageNet evaluation transform on PIL images: Resize(256) shorter side (bilinear),
    CenterCrop(224), ToTensor, Normalize(IMAGENET_MEAN, IMAGENET_STD) -> float 3 x 224 x 224."""
    import_torchvision()
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


@functools.lru_cache(maxsize=1)
def _wnids() -> tuple[str, ...]:
    if not WNIDS_FILE.exists():
        raise FileNotFoundError(f"{WNIDS_FILE} is missing: lie_cam's data files did not come with this install (reinstall it)")
    wnids = tuple(line.strip() for line in WNIDS_FILE.read_text().splitlines() if line.strip())
    if len(wnids) != 1000 or len(set(wnids)) != 1000:
        raise ValueError(f"{WNIDS_FILE} must list 1000 unique WordNet ids, found {len(wnids)}")
    return wnids


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in standard (sorted) order: position = class index."""
    return list(_wnids())


@functools.lru_cache(maxsize=1)
def _index() -> dict[str, int]:
    return {wnid: i for i, wnid in enumerate(_wnids())}


def wnid_to_index() -> dict[str, int]:
    """WordNet id -> ImageNet-1k class index (n01440764 -> 0, ..., n15075141 -> 999)."""
    return dict(_index())


def imagenette_classes() -> dict[str, int]:
    """The ten Imagenette WordNet ids -> their ImageNet-1k class indices."""
    index = _index()
    return {wnid: index[wnid] for wnid in IMAGENETTE_WNIDS}


def imagenette_archive(size: str = "320px") -> tuple[str, str]:
    """(url, md5) of the Imagenette archive for `size` in {"full", "320px", "160px"}."""
    archives = dict(_IMAGENETTE_ARCHIVES)
    try:
        import_torchvision()
        from torchvision.datasets import Imagenette

        archives.update(getattr(Imagenette, "_ARCHIVES", {}))
    except (ImportError, RuntimeError):  # older torchvision without Imagenette: the copy above
        pass
    if size not in archives:
        raise ValueError(f"unknown Imagenette size {size!r}: choose one of {sorted(archives)}")
    return archives[size]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _class_files(folder: Path) -> list[Path]:
    """Image files under `folder` (recursively), sorted by relative path."""
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in filenames if _is_image(f) and not f.startswith("."))
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _restore(cls: type, state: bytes) -> Any:
    """Unpickle a dataset in a fresh process: torchvision (for its transforms) must be imported
    through `import_torchvision` before the state is loaded (spawn/forkserver workers)."""
    import_torchvision()
    obj = cls.__new__(cls)
    obj.__dict__.update(pickle.loads(state))
    return obj


class ImageError(ValueError):
    """An image file that cannot be decoded; the message names the file. A DataLoader worker re-raises
    it in the main process as ImageError("Caught ImageError in DataLoader worker ... Original Traceback
    ..."): only the original one-line message is kept, so the command line prints one clear line."""

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:
            lines = [line for line in message.strip().splitlines() if line.strip()]
            message = lines[-1].split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


def load_image(path: str | Path) -> Image.Image:
    """The image at `path` as PIL RGB; ImageError naming the file when it cannot be read or decoded
    (not an image, truncated) or is larger than PIL's decompression-bomb limit, `Image.MAX_IMAGE_PIXELS`."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Image.DecompressionBombError as error:
        raise ImageError(f"image {path} is too large to decode safely ({error}); PIL refuses images of more than "
                         f"2 x Image.MAX_IMAGE_PIXELS = {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels: shrink or remove "
                         "it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it") from None
    except (OSError, SyntaxError, ValueError) as error:  # UnidentifiedImageError, "image file is truncated", ...
        raise ImageError(f"image {path} cannot be decoded ({type(error).__name__}: {' '.join(str(error).split())}): "
                         "replace or remove it") from None


class ImageNetFolder(Dataset):
    """A local ImageNet (validation) set: `root/val/<wnid>/*` (torchvision's layout) or `root/<wnid>/*`.

    Labels are ImageNet-1k indices from the folder's WordNet id, so a subset of the synsets keeps
    the right indices. Files ending in .jpeg/.jpg/.png (any case) are used, sorted by path within
    each class. Samples are ordered round-robin over the classes (sorted by wnid): the first image
    of every class, then the second of every class, ...; `limit` keeps the first `limit` of that
    order, so a small limit covers as many classes as possible and is a prefix of the full run.
    `transform` defaults to `preprocess()`; items are (transform(PIL RGB image), label).
    """

    def __init__(self, root: str | Path, transform: Callable | None = None, limit: int | None = None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be a positive number of images, got {limit}")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"no ImageNet folder at {root}. {IMAGENET_HELP}")
        base = root / "val" if (root / "val").is_dir() else root
        folders = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise FileNotFoundError(f"{base} has no class folders (one per synset, named by WordNet id). {IMAGENET_HELP}")
        index = _index()
        unknown = [p.name for p in folders if p.name not in index]
        if unknown:
            raise ValueError(
                f"{base}: folder(s) {unknown[:5]}{' ...' if len(unknown) > 5 else ''} are not ImageNet-1k WordNet ids; "
                f"expected one folder per synset named like 'n01440764' (tench), 'n02102040' (English springer) "
                f"... 'n15075141' (toilet tissue), see {WNIDS_FILE.name}"
            )
        per_class = [(index[p.name], _class_files(p)) for p in folders]
        samples: list[tuple[str, int]] = []
        for rank in range(max(len(files) for _, files in per_class)):
            samples.extend((str(files[rank]), label) for label, files in per_class if rank < len(files))
        if not samples:
            raise FileNotFoundError(f"no .jpeg/.jpg/.png images under {base}. {IMAGENET_HELP}")
        self.root = base
        self.wnids = [p.name for p in folders]
        self.samples = samples[:limit] if limit is not None else samples
        self.targets = [label for _, label in self.samples]
        self.transform = transform if transform is not None else preprocess()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, label = self.samples[i]
        return self.transform(load_image(path)), label

    def __reduce__(self) -> tuple[Callable, tuple[type, bytes]]:
        return _restore, (type(self), pickle.dumps(self.__dict__))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root}, {len(self)} images, {len(self.wnids)} classes)"


def _imagenette_help(root: Path, size: str, url: str, md5: str) -> str:
    folder = Path(url).name.removesuffix(".tgz")
    return (
        f"Imagenette ({size}) is expected at {root / folder / 'val'}/<wnid>/*.JPEG. Download {url} "
        f"(md5 {md5}) and extract it into {root}, e.g. `mkdir -p {root} && curl -L {url} | tar -xz -C {root}`, "
        f"or call imagenette({str(root)!r}, download=True) (`load_profile('imagenette')` downloads by default)."
    )


def imagenette(root: str | Path, download: bool = False, size: str = "320px",
               transform: Callable | None = None, limit: int | None = None) -> ImageNetFolder:
    """The Imagenette validation split at `root/imagenette2-320/val/<wnid>/` (3925 images for 320px),
    labelled with ImageNet-1k indices; `download=True` fetches and MD5-checks the fast.ai archive."""
    url, md5 = imagenette_archive(size)
    root = Path(root).expanduser()
    folder = Path(url).name.removesuffix(".tgz")
    val = root / folder / "val"
    if root.name == folder and not val.is_dir() and (root / "val").is_dir():
        val, root = root / "val", root.parent

    def present() -> bool:
        return val.is_dir() and any(p.is_dir() for p in val.iterdir())

    if not present():
        if not download:
            raise FileNotFoundError(f"Imagenette is not at {val} and download=False. " + _imagenette_help(root, size, url, md5))
        import_torchvision()
        from torchvision.datasets import utils as tv_utils

        try:
            root.mkdir(parents=True, exist_ok=True)
            tv_utils.download_and_extract_archive(url, download_root=str(root), md5=md5)
        except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError; bad checksum a RuntimeError
            raise RuntimeError(f"could not download Imagenette from {url} ({type(exc).__name__}: {exc}). "
                               + _imagenette_help(root, size, url, md5)) from exc
        if not present():
            raise RuntimeError(f"the archive {url} did not extract to {val}. " + _imagenette_help(root, size, url, md5))
    dataset = ImageNetFolder(val, transform=transform, limit=limit)
    extra = sorted(set(dataset.wnids) - set(IMAGENETTE_WNIDS))
    if extra:
        raise ValueError(f"{val} has folders {extra[:5]} that are not Imagenette classes {list(IMAGENETTE_WNIDS)}")
    return dataset


def make_loader(dataset: Dataset, batch_size: int = 64, workers: int | None = None,
                device: str | torch.device | None = None) -> DataLoader:
    """An evaluation DataLoader (no shuffling): decoding and preprocessing run in `workers`
    processes (default min(8, cpu count)); memory is pinned only for a CUDA `device`."""
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    pin = device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available()
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=pin, persistent_workers=workers > 0)


def default_data_root() -> Path:
    """Where downloads go by default: $LIE_CAM_DATA, else ~/.cache/lie_cam."""
    return Path(os.environ.get("LIE_CAM_DATA") or Path.home() / ".cache" / "lie_cam").expanduser()


def load_profile(profile: str, data: str | Path | None = None, limit: int | None = None,
                 download: bool = True) -> tuple[ImageNetFolder, str]:
    """(dataset, description) for `profile` "imagenette" (data: download folder, default
    `default_data_root()`) or "imagenet" (data: the local validation folder, default $LIE_CAM_DATA)."""
    name = str(profile).strip().lower()
    if name == "imagenette":
        root = Path(data).expanduser() if data is not None else default_data_root()
        dataset = imagenette(root, download=download, limit=limit)
        kind = "Imagenette 320px validation split"
    elif name == "imagenet":
        data = data if data is not None else os.environ.get("LIE_CAM_DATA")
        if data is None:
            raise FileNotFoundError(f"the imagenet profile needs the path of a local ImageNet validation folder (data). {IMAGENET_HELP}")
        dataset = ImageNetFolder(data, limit=limit)
        kind = "ImageNet (ILSVRC2012) validation images"
    else:
        raise ValueError(f"unknown profile {profile!r}: valid profiles here are {list(IMAGENET_PROFILES)} "
                         "(the 'embedded' profile is served by lie_cam.data)")
    subset = f", first {limit} interleaved by class" if limit is not None else ""
    description = f"{kind}: {len(dataset)} images, {len(set(dataset.targets))} classes ({dataset.root}{subset})"
    return dataset, description
