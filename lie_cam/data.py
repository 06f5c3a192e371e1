"""The embedded dataset and the stickers.

`synthetic(n, seed)`: procedural 224 x 224 RGB scenes, one of ten shapes per image
at a random position, scale, rotation and colour over a cluttered background
(colour gradient, sinusoidal texture, pixel noise, distractor blobs and strokes).
The class depends on the shape alone. Sample i is drawn from its own seed
`seed + i`, so any range of samples can be generated independently (shards), and the
train/val/test splits are disjoint seed ranges (`SPLITS`).

Stickers (paper Sec. 4, T4): a binary 14 x 14 smiley, pasted pixel-aligned after
preprocessing, i.e. the pasted values are the pixel values 0 and 1 normalised with the model's
input spec (`lie_cam.anatomy.InputSpec`: ImageNet's statistics by default, mean 0 / std 1 for a
model that takes pixels in [0, 1]).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lie_cam.anatomy import InputSpec
from lie_cam.normalization import denormalize, normalize

__all__ = [
    "STICKER_SEED",
    "CLASS_NAMES",
    "SPLITS",
    "IMAGE_SIZE",
    "synthetic",
    "synthetic_split",
    "SyntheticScenes",
    "render_scene",
    "render_many",
    "scene_label",
    "two_object_scenes",
    "normalize",
    "denormalize",
    "smiley",
    "smiley_7x7",
    "smiley_target",
    "sticker_positions",
    "paste_stickers",
]

IMAGE_SIZE = 224
CLASS_NAMES = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon", "crescent", "heart", "arrow")
# First seed of each split; samples of a split use consecutive seeds, so ranges never meet.
SPLITS = {"train": 0, "val": 10_000_000, "test": 20_000_000}

_GRID = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)  # rows, cols; a constant, cheap


def _shape_mask(label: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test for shape `label` in its own frame: u right, v up, radius ~1."""
    r = np.hypot(u, v)
    if label == 0:  # circle
        return r <= 1.0
    if label == 1:  # square
        return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
    if label == 2:  # equilateral triangle
        return (v >= -0.5) & (v <= 1.0 - math.sqrt(3) * np.abs(u) * 1.0)
    if label == 3:  # five-pointed star in polar form
        phi = np.arctan2(v, u)
        spike = np.abs(((phi * 5 / (2 * math.pi)) % 1.0) - 0.5) * 2  # 1 at tips, 0 between
        return r <= 0.45 + 0.6 * spike**1.5
    if label == 4:  # plus-shaped cross
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    if label == 5:  # ring
        return (r <= 1.0) & (r >= 0.6)
    if label == 6:  # hexagon
        a = np.abs(u)
        b = np.abs(v)
        return (b <= 0.866) & (math.sqrt(3) * a + b <= math.sqrt(3))
    if label == 7:  # crescent
        return (r <= 1.0) & (np.hypot(u - 0.45, v) > 0.8)
    if label == 8:  # heart: (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0
        x, y = u * 1.15, v * 1.15 + 0.1
        return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
    if label == 9:  # arrow: shaft and head
        shaft = (u >= -1.0) & (u <= 0.2) & (np.abs(v) <= 0.3)
        head = (u >= 0.2) & (u <= 1.0) & (np.abs(v) <= 0.65 * (1.0 - u) / 0.8)
        return shaft | head
    raise ValueError(f"label must be in [0, {len(CLASS_NAMES)}), got {label}")


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3).astype(np.float32)


def render_scene(seed: int) -> tuple[np.ndarray, int, np.ndarray]:
    """One scene from its seed: (uint8 H x W x 3 image, label, bool H x W object mask)."""
    rng = np.random.default_rng(seed)
    label = int(rng.integers(len(CLASS_NAMES)))
    rows, cols = _GRID
    size = IMAGE_SIZE

    # Background: a two-colour gradient, a sinusoidal texture and noise.
    c0, c1 = _random_colour(rng), _random_colour(rng)
    angle = rng.uniform(0, 2 * math.pi)
    t = ((cols * math.cos(angle) + rows * math.sin(angle)) / size + 1) / 2
    img = c0 + (c1 - c0) * np.clip(t, 0, 1)[..., None]
    freq = rng.uniform(0.02, 0.15, size=2)
    phase = rng.uniform(0, 2 * math.pi)
    texture = np.sin(cols * freq[0] + rows * freq[1] + phase) * rng.uniform(10, 40)
    img = img + texture[..., None] * rng.uniform(-1, 1, size=3).astype(np.float32)

    # Distractors: blobs and strokes that are not any class's shape.
    for _ in range(int(rng.integers(3, 9))):
        cy, cx = rng.uniform(0, size, size=2)
        ry, rx = rng.uniform(3, 14, size=2)
        blob = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1
        img[blob] = _random_colour(rng)
    for _ in range(int(rng.integers(2, 6))):
        y0, x0 = rng.uniform(0, size, size=2)
        theta = rng.uniform(0, math.pi)
        length, width = rng.uniform(20, 90), rng.uniform(1.5, 4)
        along = (cols - x0) * math.cos(theta) + (rows - y0) * math.sin(theta)
        across = -(cols - x0) * math.sin(theta) + (rows - y0) * math.cos(theta)
        stroke = (np.abs(across) <= width) & (along >= 0) & (along <= length)
        img[stroke] = _random_colour(rng)

    # The object.
    # Radii of 40-70 px: the object spans several of A's 16-px cells, so a 14 x 14 map can point at it.
    radius = rng.uniform(40, 70)
    margin = radius * 1.05 + 2
    cy, cx = rng.uniform(margin, size - margin, size=2)
    rotation = rng.uniform(0, 2 * math.pi)
    dy, dx = (rows - cy) / radius, (cols - cx) / radius
    u = dx * math.cos(rotation) + dy * math.sin(rotation)
    v = -(-dx * math.sin(rotation) + dy * math.cos(rotation))
    mask = _shape_mask(label, u, v)
    colour = _random_colour(rng)
    surround = img[mask].mean(axis=0) if mask.any() else img.mean(axis=(0, 1))
    if np.abs(colour - surround).sum() < 150:  # keep the object visible against its background
        colour = (colour + 128) % 256
    shade = 1 + 0.15 * u.clip(-1, 1)[..., None]  # a little shading so the object is not flat
    img = np.where(mask[..., None], colour * shade, img)
    img = img + rng.normal(0, 6, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), label, mask


def render_many(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scenes seed .. seed + n - 1: uint8 images n x H x W x 3, labels n, bool masks n x H x W."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    masks = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    for i in range(n):
        images[i], labels[i], masks[i] = render_scene(seed + i)
    return images, labels, masks


def scene_label(seed: int) -> int:
    """The class of scene `seed` without rendering it (the first draw of its generator)."""
    return int(np.random.default_rng(seed).integers(len(CLASS_NAMES)))


def two_object_scenes(n: int, classes: tuple[int, int], seed: int, gap: int = 8
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n scenes holding an object of each of two classes, for explaining one class and then the other
    (Heo et al. 2019's active fooling pairs two objects in one image): the scenes of class a = classes[0]
    from seeds seed, seed+1, ... in order, each with the object of the next scene of class b pasted in
    (its pixels only, the background of a kept) where the two objects stay `gap` pixels apart; a b-scene
    that does not fit is tried again for the next a-scene. Returns uint8 images n x H x W x 3 and the bool
    masks of object a and of object b (n x H x W each). Deterministic in `seed`."""
    a, b = (int(c) for c in classes)
    if a == b or not all(0 <= c < len(CLASS_NAMES) for c in (a, b)):
        raise ValueError(f"classes must be two different classes in 0..{len(CLASS_NAMES) - 1}, got {classes}")
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    masks_a = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    masks_b = np.empty_like(masks_a)
    grown = torch.nn.MaxPool2d(2 * gap + 1, stride=1, padding=gap)
    waiting: list[tuple[np.ndarray, np.ndarray]] = []  # b-scenes not used yet, in seed order
    s, made = seed, 0
    while made < n:
        label = scene_label(s)
        if label == b:
            image, _, mask = render_scene(s)
            waiting.append((image, mask))
        elif label == a and waiting:
            image, _, mask = render_scene(s)
            near = grown(torch.from_numpy(mask)[None, None].float())[0, 0].numpy() > 0
            for j, (image_b, mask_b) in enumerate(waiting):
                if not (near & mask_b).any():
                    images[made] = np.where(mask_b[..., None], image_b, image)
                    masks_a[made], masks_b[made] = mask, mask_b
                    made += 1
                    del waiting[j]
                    break
        s += 1
    return images, masks_a, masks_b


def uint8_to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """B x H x W x 3 uint8 images -> normalised float32 B x 3 x H x W."""
    tensor = torch.as_tensor(images).permute(0, 3, 1, 2).float().div_(255)
    return normalize(tensor)


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n scenes from seeds seed, seed+1, ...: (normalised float32 n x 3 x 224 x 224,
    int64 labels n, bool object masks n x 224 x 224)."""
    images, labels, masks = render_many(int(n), int(seed))
    return uint8_to_input(images), torch.from_numpy(labels), torch.from_numpy(masks)


def synthetic_split(split: str, n: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Samples start .. start+n-1 of the "train", "val" or "test" split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if start < 0 or start + n > SPLITS["val"]:
        raise ValueError("samples of a split are numbered from 0 to 9,999,999")
    return synthetic(n, SPLITS[split] + start)


class SyntheticScenes(torch.utils.data.Dataset):
    """Samples start .. start+n-1 of a split as a Dataset of (x 3 x 224 x 224, label, mask), so that
    rendering runs in DataLoader workers (`lie_cam.imagenet.make_loader`)."""

    def __init__(self, split: str, n: int, start: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        self.first_seed = SPLITS[split] + start
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        if not 0 <= index < self.n:
            raise IndexError(index)
        image, label, mask = render_scene(self.first_seed + index)
        return uint8_to_input(image[None])[0], label, torch.from_numpy(mask)


# ---------------------------------------------------------------------------
# Stickers
# ---------------------------------------------------------------------------

STICKER_SIZE = 14
STICKER_SEED = 1_000_003  # the tables' sticker positions of image i are drawn from STICKER_SEED + i
_SMILEY_BLACK = [(1, 2), (1, 4), (3, 3), (4, 1), (4, 5), (5, 2), (5, 3), (5, 4)]


def smiley_7x7() -> torch.Tensor:
    """7 x 7 black-on-white smiley (1 white, 0 black): eyes, nose, mouth corners, mouth."""
    s = torch.ones(7, 7)
    for r, c in _SMILEY_BLACK:
        s[r, c] = 0.0
    return s


def smiley() -> torch.Tensor:
    """The 14 x 14 binary sticker: the 7 x 7 smiley upsampled x2 by nearest neighbour (32 black pixels)."""
    return smiley_7x7().repeat_interleave(2, 0).repeat_interleave(2, 1)


def smiley_target(size: int = 14) -> torch.Tensor:
    """T2's target explanation I_T, built as the authors' code built it (`experiment1.py` of the
    workshop version): the 7 x 7 black-on-white smiley (face 1, eyes, nose and mouth 0) resized
    bilinearly to size x size as PIL resizes the 8-bit PNG (antialiased, rounded to 1/255), then
    min-max normalised: I_T = (q - min q) / (max q - min q), q = round(255 * resize(smiley_7x7())).

    So the face is high (1) and the features low: at 14 x 14 the 8 mouth pixels of the bilinear
    image's minimum (0.25 of white) are 0, and max I_T = 1. (The paper's text says a 14 x 14
    smiley; its photographic negative, features high, is another target.) The one definition used
    by the CLI, the book and the tests."""
    from torch.nn import functional as F

    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int (the side of A), got {size!r}")
    face = smiley_7x7().double()[None, None]
    resized = F.interpolate(face, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0, 0]
    grey = torch.floor(resized * 255 + 0.5)  # PIL's 8-bit result, rounded half up
    low, high = grey.min(), grey.max()
    if high == low:  # a 1 x 1 target: one pixel, the face's grey
        return torch.ones(size, size)
    return ((grey - low) / (high - low)).float()


def sticker_positions(seed: int, count: int = 3, image_size: int = IMAGE_SIZE, low: int = 14, high: int | None = None,
                      cell: int = 16, size: int = STICKER_SIZE) -> list[tuple[int, int]]:
    """`count` top-left corners drawn uniformly in [low, high) (high: image_size - low unless given;
    210 at 224), redrawn until the stickers do not overlap and their centres fall in distinct cells of
    A (`cell` pixels a side, the network's total stride), so each is detected separately. Deterministic in `seed`."""
    high = image_size - low if high is None else high
    if high <= low or high + size > image_size:
        raise ValueError(f"image_size={image_size} leaves no room for a {size}-pixel sticker between low={low} "
                         f"and high={high}: give larger images or a smaller low")
    rng = np.random.default_rng(seed)
    for _ in range(10_000):
        corners = [tuple(int(v) for v in rng.integers(low, high, size=2)) for _ in range(count)]
        cells = {((r + size // 2) // cell, (c + size // 2) // cell) for r, c in corners}
        apart = all(abs(a[0] - b[0]) >= size or abs(a[1] - b[1]) >= size
                    for i, a in enumerate(corners) for b in corners[i + 1 :])
        if apart and len(cells) == count:
            return corners
    raise RuntimeError(f"could not place {count} stickers apart in a {image_size}-pixel image: ask for fewer (count)")


def paste_stickers(x: torch.Tensor, seeds: torch.Tensor | list[int], sticker: torch.Tensor | None = None,
                   count: int = 3, spec: InputSpec | None = None, cell: int = 16, high: int | None = None
                   ) -> tuple[torch.Tensor, list[list[tuple[int, int]]]]:
    """A copy of the normalised batch x with `count` stickers per image pasted fully opaque: their
    pixel values 0/1 normalised with the model's input spec, (p - mean) / std (`spec`; None is the
    default `InputSpec`, ImageNet's statistics; pass `lie_cam.anatomy.input_spec(model)`), at
    `sticker_positions(seeds[i])` for x's size and A's `cell` (`high`: the largest corner, for stickers
    larger than 14 pixels). Returns the stickered batch and the corners per image."""
    spec = InputSpec() if spec is None else spec
    if not isinstance(spec, InputSpec):
        raise TypeError(f"spec must be a lie_cam.anatomy.InputSpec, got {type(spec).__name__}")
    sticker = smiley() if sticker is None else sticker
    if sticker.dim() == 2:
        sticker = sticker.expand(3, *sticker.shape)
    mean = torch.tensor(spec.mean, dtype=x.dtype).reshape(3, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype).reshape(3, 1, 1)
    patch = ((sticker.to(x.dtype) - mean) / std).to(x.device)  # in x's dtype, as `normalize` does
    h, w = patch.shape[-2:]
    seeds = [int(s) for s in seeds]
    if len(seeds) != x.shape[0]:
        raise ValueError(f"need one seed per image: got {len(seeds)} seeds for {x.shape[0]} images")
    out = x.clone()
    corners = []
    for i, s in enumerate(seeds):
        positions = sticker_positions(s, count=count, image_size=x.shape[-1], cell=cell, size=h, high=high)
        for r, c in positions:
            out[i, :, r : r + h, c : c + w] = patch
        corners.append(positions)
    return out, corners
