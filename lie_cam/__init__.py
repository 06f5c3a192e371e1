"""lie_cam: Grad-CAM, the weight surgery that makes it lie (T1-T4), and the paper's metrics.

    from lie_cam import gradcam, target_layer
    from lie_cam import anatomy, metrics, data, models      # the core
    from lie_cam import attacks, audit, explore             # the wings
    from lie_cam import experiments                         # the commands that write files

Importing the package does no work: modules are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from lie_cam.gradcam import GradCAMResult, gradcam, head_gradcam, target_layer

# The core, flat (one module per concept), then the wings and the experiments, each a subpackage;
# all loaded on first use (one name a line, so that additions merge cleanly).
_SUBMODULES = (
    "anatomy",
    "book",
    "cli",
    "compat",
    "data",
    "imagenet",
    "metrics",
    "models",
    "normalization",
    "plotting",
    "profiles",
    "resources",
    "train",
    "attacks",
    "audit",
    "experiments",
    "explore",
)
__all__ = ["GradCAMResult", "gradcam", "head_gradcam", "target_layer", *_SUBMODULES]
__version__ = "0.1.0"

def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"lie_cam.{name}")
    raise AttributeError(f"module 'lie_cam' has no attribute {name!r}")
