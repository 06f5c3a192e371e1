"""A regular (non-editable) install ships and finds the embedded model and the ImageNet ids."""

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out, source = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):  # a copy, so the build leaves nothing in the checkout
        shutil.copy(ROOT / name, source / name)
    for name in ("lie_cam", "data"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(out), str(source)], check=True, capture_output=True, text=True)
    (path,) = out.glob("lie_cam-*.whl")
    return path


def test_the_wheel_carries_the_data_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("compact_vgg16.safetensors", "compact_vgg16.json", "imagenet_wnids.txt"):
        assert f"lie_cam/data_files/{name}" in names
    assert "lie_cam/models.py" in names and not any(n.startswith("data/") for n in names)
    packages = {path.parent.relative_to(ROOT).as_posix() for path in (ROOT / "lie_cam").rglob("__init__.py")}
    assert packages and all(f"{package}/__init__.py" in names for package in packages), packages


def test_the_wheel_carries_every_file_a_chapter_reads(wheel):
    """What a chapter loads with `data_file(...)` (chapter 8's explainer matrix and its independent
    re-measurement, chapter 11's detectors) is inside the wheel, so it runs where only the package is."""
    names = set(zipfile.ZipFile(wheel).namelist())
    read = set()
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        code = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
        read |= set(re.findall(r'data_file\("([^"]+)"\)', code))
    assert "explainers/matrix.json" in read  # the scan sees chapter 8's read
    read |= {"explainers/explainers.json", "explainers/independent/independent.json",
             "explainers/independent/independent_run.json"}  # read beside matrix.json
    missing = sorted(name for name in read if f"lie_cam/data_files/{name}" not in names)
    assert not missing, f"not in the wheel: {missing}"


def test_an_installed_wheel_finds_the_embedded_model_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = ("import lie_cam, lie_cam.models as m, lie_cam.imagenet as i; model = m.load_embedded(); "
             "import lie_cam.attacks, lie_cam.audit, lie_cam.experiments, lie_cam.explore, lie_cam.cli; "
             "print(lie_cam.__file__); print(m.EMBEDDED_WEIGHTS); print(len(i.imagenet_wnids()))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": ""},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    package, weights, count = done.stdout.split()
    assert Path(package).is_relative_to(site) and Path(weights).is_relative_to(site)
    assert count == "1000"
