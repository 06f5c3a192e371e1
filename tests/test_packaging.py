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


def test_the_colab_path_runs_a_notebook_from_the_wheel_alone(wheel, tmp_path):
    """tools/colab_path.py (what `make test` runs on every chapter): in its fresh environment a
    notebook alone in an empty folder imports lie_cam from the wheel and finds the shipped data;
    one that reads a file of the repository by a relative path fails there, one that imports lie_cam
    from the checkout is caught; the executed notebook is found in the cache by its source's cells."""
    import nbformat
    from jupyter_cache import get_cache

    sys.path.insert(0, str(ROOT / "tools"))
    import colab_path  # tools/ is not a package

    python = colab_path.fresh_venv(tmp_path / "venv", wheel)
    runner = tmp_path / "runner.py"
    shutil.copy(ROOT / "tools" / "colab_path.py", runner)

    def run(name: str, code: str):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(code)]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        source = tmp_path / "book" / name
        source.parent.mkdir(exist_ok=True)
        nbformat.write(nb, source)
        return source, colab_path.run_chapter(source, python, runner, tmp_path / "run" / source.stem, 120)

    source, (executed, why) = run("good.ipynb", "from lie_cam.resources import data_file\n"
                                                "print(data_file('explainers/matrix.json').is_file())")
    assert executed is not None, why
    assert nbformat.read(executed, as_version=4).cells[0].outputs[0]["text"] == "True\n"
    colab_path.cache_executed(executed, source, tmp_path / "cache", 1.0)
    assert get_cache(str(tmp_path / "cache")).match_cache_notebook(nbformat.read(source, as_version=4))

    _, (executed, why) = run("reads.ipynb", "print(open('data/zoo.json').read()[:10])")  # fine in the checkout
    assert executed is None and "FileNotFoundError" in why
    _, (executed, why) = run("checkout.ipynb", f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nimport lie_cam")
    assert executed is None and "outside the fresh environment" in why


def test_the_cache_is_emptied_when_the_sources_change(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    import colab_path

    cache = tmp_path / "cache"
    assert not colab_path.prune_cache(cache)  # a new cache, stamped
    (cache / "executed.ipynb").write_text("{}")
    assert not colab_path.prune_cache(cache) and (cache / "executed.ipynb").exists()
    (cache / colab_path.STAMP).write_text("older sources\n")
    assert colab_path.prune_cache(cache) and not (cache / "executed.ipynb").exists()


def test_the_colab_path_refuses_what_is_not_a_notebook(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "tools"))
    import colab_path

    (tmp_path / "notes.txt").write_text("x")
    for bad in (tmp_path / "missing.ipynb", tmp_path / "notes.txt"):
        assert colab_path.main([str(bad)]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "notebooks must be existing .ipynb files" in err and bad.name in err
