"""Where the files that ship with lie_cam are, for every kind of install.

The repository keeps them in its top-level `data/` folder; `pyproject.toml` installs that
folder as the package `lie_cam.data_files`, so a regular `pip install .` (or
`pip install git+URL`, as on Colab) carries them inside site-packages, and an editable
install maps the same name onto the checkout's `data/`.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["data_file", "data_dir"]

_PACKAGE = "lie_cam.data_files"


def data_dir() -> Path:
    """The folder holding the shipped files (site-packages/lie_cam/data_files, or the checkout's data/)."""
    try:
        folder = Path(str(importlib.resources.files(_PACKAGE)))
    except ModuleNotFoundError:  # running from a source tree that was never installed
        folder = Path(__file__).resolve().parent.parent / "data"
    return folder


def data_file(name: str) -> Path:
    """The path of a shipped file; FileNotFoundError naming what is missing and how to get it."""
    path = data_dir() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{name} is not in {path.parent}: lie_cam's data files are missing from this install. "
            "Reinstall the package (pip install . or pip install git+<repository url>), which ships them")
    return path
