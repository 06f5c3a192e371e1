"""Import torchvision also where its compiled extension cannot load.

The torchvision wheel on PyPI is a CUDA build. With a CPU-only torch its `_C`
extension fails to load, and `import torchvision` then stops with
"operator torchvision::nms does not exist" because it registers fake kernels for
`nms`/`qnms` unconditionally. Declaring those operator schemas with
`torch.library` first lets the pure-Python parts (models, transforms, datasets)
import; the compiled ops (nms, roi_align, image decoders) stay unavailable, so
images are decoded with PIL. Where the extension loads (Colab, CUDA) nothing is
declared.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from types import ModuleType

import torch

__all__ = ["import_torchvision", "torchvision_extension_loaded"]

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library: torch.library.Library | None = None  # must stay referenced: dropping it removes the schemas
_extension_loaded: bool | None = None


def _load_extension() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torchvision is not installed: pip install torchvision (see constraints.txt for the pin)")
    for location in spec.submodule_search_locations:
        for path in glob.glob(os.path.join(location, "_C.*")):
            try:
                torch.ops.load_library(path)
                return True
            except (OSError, RuntimeError):
                return False
    return False


def _declare_missing_schemas() -> None:
    global _library
    if _library is None:
        _library = torch.library.Library("torchvision", "FRAGMENT")  # noqa: TOR901
    for name, schema in _SCHEMAS.items():
        if not torch._C._dispatch_has_kernel(f"torchvision::{name}") and not _has_schema(name):
            _library.define(schema)


def _has_schema(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def torchvision_extension_loaded() -> bool:
    """Whether torchvision's compiled ops (nms, image decoding, ...) are usable here."""
    import_torchvision()
    return bool(_extension_loaded)


def import_torchvision() -> ModuleType:
    """`import torchvision`, declaring the operator schemas its CPU-less wheel lacks if needed."""
    global _extension_loaded
    if "torchvision" in sys.modules and _extension_loaded is not None:
        return sys.modules["torchvision"]
    _extension_loaded = _load_extension()
    if not _extension_loaded:
        _declare_missing_schemas()
    import torchvision

    return torchvision
