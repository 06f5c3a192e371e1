"""`audit(model, ...)`: every self-relative check of `lie_cam.audit.calibration` on one model, and what a
report shows (maps of several CAM methods on the same images, the randomisation test's maps).

    from lie_cam.audit.auditing import audit
    result = audit(model)            # default images: the embedded scenes at the model's input size
    result.exit_code                 # 0 no evidence of manipulation, 1 evidence
    [c.evidence for c in result.checks]

The images are pixels in [0, 1] at the side of the model's `input_spec` (`lie_cam.anatomy.input_spec`),
normalised with its mean and std. `layer`: the module whose output is A (default
`lie_cam.target_layer(model)`), or its name (`layer_by_name`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lie_cam.anatomy import input_spec
from lie_cam.audit.calibration import CHECKS, CheckResult
from lie_cam.gradcam import gradcam, non_finite_weights, target_layer

__all__ = ["AuditResult", "audit", "default_images", "folder_images", "layer_by_name", "MAP_METHODS",
           "IMAGE_SUFFIXES", "DEFAULT_IMAGES", "summary_lines", "run_checks"]

DEFAULT_IMAGES = 4  # the embedded scenes an audit without --images uses
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# The CAM methods the report shows side by side: lie_cam's Grad-CAM, two gradient methods and a
# gradient-free one of pytorch-grad-cam (lie_cam.audit.explainers' registry; captum's LayerGradCam
# would repeat Grad-CAM at the cost of another backward pass).
MAP_METHODS = (("lie_cam", "gradcam"), ("pytorch-grad-cam", "GradCAMPlusPlus"), ("pytorch-grad-cam", "LayerCAM"),
               ("pytorch-grad-cam", "EigenCAM"))


@dataclass
class AuditResult:
    """The checks' results, the verdict and what the report draws (pixels and maps are not in as_dict)."""

    model: str
    images: str
    layer: str
    checks: list[CheckResult]
    seconds: float
    pixels: torch.Tensor
    classes: list[int]
    maps: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def flagged(self) -> list[str]:
        return [c.key for c in self.checks if c.flagged]

    @property
    def exit_code(self) -> int:
        """0: no check found evidence of manipulation; 1: at least one did."""
        return 1 if self.flagged else 0

    @property
    def verdict(self) -> str:
        if self.flagged:
            return f"EVIDENCE of manipulation: {', '.join(self.flagged)}"
        return "no evidence of manipulation"

    def as_dict(self) -> dict:
        return {"model": self.model, "images": self.images, "layer": self.layer, "verdict": self.verdict,
                "exit_code": self.exit_code, "flagged": self.flagged, "seconds": round(self.seconds, 1),
                "classes": self.classes, "checks": [c.as_dict() for c in self.checks],
                "map_methods": list(self.maps)}


def _normalise(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    spec = input_spec(model)
    mean = torch.tensor(spec.mean, dtype=pixels.dtype).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels - mean) / std


def _resize(pixels: torch.Tensor, side: int) -> torch.Tensor:
    if pixels.shape[-1] == side and pixels.shape[-2] == side:
        return pixels
    return F.interpolate(pixels, size=(side, side), mode="bilinear", align_corners=False).clamp(0, 1)


def default_images(model: nn.Module, n: int = DEFAULT_IMAGES) -> tuple[torch.Tensor, str]:
    """(pixels n x 3 x side x side in [0, 1], description): the embedded validation scenes
    (`lie_cam.data.render_many`, seeds of the "val" split), resized to the model's input side."""
    from lie_cam import data

    side = input_spec(model).side
    images, _, _ = data.render_many(n, data.SPLITS["val"])
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    return _resize(pixels, side), f"default: {n} embedded synthetic scenes (val split) at {side} px"


def folder_images(folder: str | Path, model: nn.Module, limit: int = 8) -> tuple[torch.Tensor, str]:
    """(pixels, description): the first `limit` images of `folder` (sorted by name), RGB, resized to the
    model's input side. ValueError when the folder holds no readable image."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--images {folder}: not a folder of images ({', '.join(IMAGE_SUFFIXES)})")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise ValueError(f"--images {folder}: holds no image ({', '.join(IMAGE_SUFFIXES)})")
    side = input_spec(model).side
    batch = []
    for path in files:
        try:
            with Image.open(path) as image:
                rgb = np.asarray(image.convert("RGB").resize((side, side), Image.BILINEAR), dtype=np.float32)
        except OSError as error:
            raise ValueError(f"--images {folder}: {path.name} is not a readable image ({error})") from None
        batch.append(torch.from_numpy(rgb).permute(2, 0, 1) / 255)
    return torch.stack(batch), f"{len(files)} image(s) from {folder} at {side} px"


def layer_by_name(model: nn.Module, name: str) -> nn.Module:
    """The submodule `name` (as in model.named_modules()); ValueError listing a few names otherwise."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][-8:]
        raise ValueError(f"--layer {name!r} is not a module of the model; its last modules are {names}") from None


def _layer_name(model: nn.Module, layer: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is layer:
            return name or "(root)"
    raise ValueError(f"layer ({type(layer).__name__}) is not a module of the model")


def _cam_maps(model: nn.Module, layer: nn.Module, x: torch.Tensor, classes: torch.Tensor,
              log: Callable[[str], None]) -> dict[str, torch.Tensor]:
    """{method: B x H x W maps in [0, 1]} for `MAP_METHODS`, each on its own copy of the model; a method
    that cannot run on this model is left out (and said so)."""
    from lie_cam.audit.explainers import explainer
    from lie_cam.compat import import_torchvision

    import_torchvision()  # pytorch-grad-cam imports torchvision, whose CPU wheel needs lie_cam's shim first
    name = _layer_name(model, layer)
    maps = {}
    for library, method in MAP_METHODS:
        twin = copy.deepcopy(model)
        try:
            default, _ = explainer(library, method).run(twin, twin.get_submodule(name) if name != "(root)" else twin,
                                                         x, classes)
        except Exception as error:  # a third-party method that does not take this model: shown as missing
            log(f"  {library}/{method} left out: {type(error).__name__}: {str(error)[:80]}")
            continue
        m = torch.as_tensor(default).detach().double()
        m = m - m.flatten(1).amin(1).view(-1, 1, 1)
        maps[f"{library}/{method}"] = m / m.flatten(1).amax(1).clamp_min(1e-300).view(-1, 1, 1)
    return maps


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    bad = non_finite_weights(model)
    if bad:
        raise ValueError(f"the model's weights are not finite ({', '.join(bad[:3])}): it cannot be audited")


def run_checks(model: nn.Module, x: torch.Tensor, layer: nn.Module | None = None, architecture: bool = True,
               log: Callable[[str], None] | None = None) -> list[CheckResult]:
    """Every check of `CHECKS` (the architecture check only when `architecture`) on `model` with the
    normalised images x, Grad-CAM at `layer` (default `target_layer(model)`): what `audit` and the
    detection study (`python -m lie_cam detect`) both run."""
    layer = target_layer(model) if layer is None else layer
    checks = [c for c in CHECKS if architecture or c.key != "architecture"]
    results = []
    for i, check in enumerate(checks, 1):
        t = time.time()
        if log is not None and check.needs_images:
            log(f"[{i}/{len(checks)}] {check.name} ...")
        results.append(check.function(model, x, layer))
        if log is not None:
            state = "FLAGGED" if results[-1].flagged else "ok"
            log(f"[{i}/{len(checks)}] {check.name}: {state} "
                f"({time.time() - t:.1f}s)")
    return results


def audit(model: nn.Module, pixels: torch.Tensor | None = None, images: str | None = None,
          layer: nn.Module | str | None = None, architecture: bool = True, maps: bool = True,
          name: str = "model", progress: Callable[[str], None] | None = None) -> AuditResult:
    """Every check of `CHECKS` on `model` (eval mode; not modified) with `pixels` (B x 3 x side x side in
    [0, 1]; default `default_images`) normalised by the model's input spec, Grad-CAM at `layer`. The
    architecture check is skipped when `architecture` is False; `maps`: compute the report's CAM maps."""
    _check_model(model)
    log = progress or (lambda message: None)
    started = time.time()
    model = model.eval()
    if pixels is None:
        pixels, images = default_images(model)
    if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must be a B x 3 x H x W tensor in [0, 1], got "
                         f"{tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__}")
    layer = layer_by_name(model, layer) if isinstance(layer, str) else (target_layer(model) if layer is None else layer)
    x = _normalise(model, pixels.float())
    results = run_checks(model, x, layer, architecture, log)
    with torch.no_grad():
        classes = model(x).argmax(1)
    drawn = {}
    if maps:
        log(f"the report's maps: {len(MAP_METHODS)} CAM methods and the randomised model ...")
        drawn = _cam_maps(model, layer, x, classes, log)
        drawn["randomised logits/gradcam"] = _randomised_map(model, layer, x, classes)
    return AuditResult(name, images or f"{len(pixels)} given image(s)", _layer_name(model, layer), results,
                       time.time() - started, pixels, classes.tolist(), drawn)


def _randomised_map(model: nn.Module, layer: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of a copy whose logits layer is re-initialised (`detectors.randomised_logits`), for the
    same classes: what the randomisation test compares."""
    from lie_cam.audit.detectors import randomised_logits

    with randomised_logits(model, seed=0):
        return gradcam(model, x, target=classes, layer=layer).normalized.double()


def summary_lines(result: AuditResult) -> list[str]:
    """The one-screen summary: verdict, then one line per check (score against threshold)."""
    lines = [f"audit of {result.model}: {result.verdict}", f"images: {result.images}", f"layer: {result.layer}"]
    for c in result.checks:
        score = "n/a" if c.score is None else f"{c.score:.4g}"
        mark = "FLAG" if c.flagged else " ok "
        lines.append(f"  [{mark}] {c.name:<31} {score:>9} (limit {c.threshold:g})")
    lines.append(f"{result.seconds:.0f}s; exit code {result.exit_code}")
    return lines

