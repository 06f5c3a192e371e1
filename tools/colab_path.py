"""The Colab path, offline: every chapter executed from the installed wheel alone, in an empty folder.

    python tools/colab_path.py                          # every chapter under book/
    python tools/colab_path.py book/08_explainers.ipynb # some chapters
    python tools/colab_path.py --no-cache               # do not hand the outputs to the book build

On Colab a chapter's first cell pip-installs lie_cam and the notebook then runs alone, in a folder
that holds nothing of the repository. This script does the same without the network:

  1. it builds lie_cam's wheel from a copy of the sources (pyproject.toml, README.md, lie_cam/, data/);
  2. it makes a fresh virtual environment OUTSIDE the repository (a temporary folder) and installs
     the wheel there with --no-deps. The dependencies (torch, ...) come from this Python's
     site-packages, named in a .pth file of the fresh environment: a path line in a .pth only adds
     that folder, whose own .pth files (an editable install's finder among them) are not run, so
     `import lie_cam` finds the wheel (checked before any chapter, and again inside every kernel);
  3. it copies each chapter ALONE into an empty folder and executes it there (jupyter-cache's
     executor, as the book build does) with a kernel of the fresh environment, PYTHONPATH unset;
  4. it puts each executed notebook into the book's jupyter-cache (default `_build/.jupyter_cache`,
     where `jupyter-book build` looks with `execute_notebooks: cache`): the cache is keyed on the
     code cells, so the build finds these outputs and does not execute the chapters again.

The cache is stamped with a digest of the package's sources (`lie_cam-sources.sha256`); when they
change, this script and `--prune-cache` (run by `make book` before the build) empty it, so the
book never shows outputs of older code.

Exit status 0 when every chapter ran, 1 naming those that failed (with the failing cell's
traceback), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "_build" / ".jupyter_cache"  # jupyter-book's default for a build of ROOT
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "lie_cam", "data")
STAMP = "lie_cam-sources.sha256"  # in the cache: the sources its notebooks were executed with
# Run in the chapter's kernel after its last cell: where lie_cam came from, and which Python ran it.
PROBE = "import json, sys, lie_cam\nprint(json.dumps({'lie_cam': lie_cam.__file__, 'python': sys.executable}))"


def build_wheel(out: Path) -> Path:
    """lie_cam's wheel, built from a copy of the sources (the checkout is left as it was)."""
    source = out / "source"
    source.mkdir(parents=True)
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif (ROOT / name).is_file():
            shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(out), str(source)], check=True, capture_output=True, text=True)
    shutil.rmtree(source)
    (wheel,) = out.glob("lie_cam-*.whl")
    return wheel


def clean_env(venv: Path) -> dict[str, str]:
    """This process's environment without anything that points Python at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["JUPYTER_PATH"] = str(venv / "share" / "jupyter")  # the kernel below, before any other
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    return env


def fresh_venv(venv: Path, wheel: Path) -> Path:
    """A new virtual environment with the wheel installed and this Python's packages beside it;
    returns its Python, after checking that `import lie_cam` there finds the wheel."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--quiet", str(wheel)], check=True, capture_output=True, text=True)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # Path lines only: the folders are added, their .pth files (the editable finder's) are not run.
    Path(purelib, "lie_cam_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    kernel = venv / "share" / "jupyter" / "kernels" / "python3"
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (lie_cam wheel)", "language": "python"}))
    found = subprocess.run([str(python), "-c", "import lie_cam; print(lie_cam.__file__)"], cwd=venv,
                           env=clean_env(venv), check=True, capture_output=True, text=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(venv.resolve()):
        raise RuntimeError(f"the fresh environment imports lie_cam from {found}, not from the wheel in {venv}")
    return python


def execute_here(name: str, timeout: int) -> int:
    """(Run by the fresh Python, in the chapter's folder.) Execute `name` in place as the book build
    does, then the probe in the same kernel; write the executed notebook and print the probe's line."""
    import nbformat
    from jupyter_cache.executors.utils import single_nb_execution

    if sorted(os.listdir(".")) != [name]:
        print(f"the chapter's folder holds more than {name}: {sorted(os.listdir('.'))}", file=sys.stderr)
        return 1
    nb = nbformat.read(name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    result = single_nb_execution(nb, cwd=os.getcwd(), timeout=timeout, allow_errors=False)
    if result.err is not None:
        print(result.exc_string, file=sys.stderr)
        return 1
    probe = nb.cells.pop()
    nbformat.write(nb, name)
    print("".join(o.get("text", "") for o in probe.outputs if o.output_type == "stream").strip().splitlines()[-1])
    return 0


def run_chapter(notebook: Path, python: Path, runner: Path, folder: Path, timeout: int) -> tuple[Path | None, str]:
    """Copy `notebook` alone into the new `folder`, execute it there with the fresh `python`;
    (the executed copy, "") or (None, why it failed)."""
    folder.mkdir(parents=True)
    copy = folder / notebook.name
    shutil.copy(notebook, copy)
    venv = python.parent.parent
    done = subprocess.run([str(python), str(runner), "--execute-here", notebook.name, "--timeout", str(timeout)],
                          cwd=folder, env=clean_env(venv), capture_output=True, text=True)
    if done.returncode != 0:
        return None, done.stderr[-6000:] or done.stdout[-2000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    # (not resolved: the environment's python is a link to the Python it was made from)
    for key in ("lie_cam", "python"):
        if not Path(os.path.abspath(probe[key])).is_relative_to(os.path.abspath(venv)):
            return None, f"the chapter's kernel used {key} from {probe[key]}, outside the fresh environment {venv}"
    return copy, ""


def cache_executed(executed: Path, source: Path, cache: Path, seconds: float) -> None:
    """Put the executed notebook into the jupyter-cache the book build reads (keyed on the code cells)."""
    from jupyter_cache import get_cache

    get_cache(str(cache)).cache_notebook_file(str(executed), uri=str(source), data={"execution_seconds": seconds},
                                              check_validity=False, overwrite=True)


def sources_digest(root: Path = ROOT) -> str:
    """sha256 of what a chapter's outputs depend on besides its code cells: the package, its data,
    pyproject.toml and the LIE_CAM_* settings (the cache itself is keyed on the code cells only)."""
    digest = hashlib.sha256()
    files = [root / "pyproject.toml", *(root / "lie_cam").rglob("*.py"), *(root / "data").rglob("*")]
    for path in sorted(p for p in files if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(json.dumps(sorted((k, v) for k, v in os.environ.items() if k.startswith("LIE_CAM_"))).encode())
    return digest.hexdigest()


def prune_cache(cache: Path) -> bool:
    """Empty `cache` when its notebooks were executed with other sources than these (so a build
    never shows outputs of older code); stamp it with these sources. True when it was emptied."""
    stamp, digest = cache / STAMP, sources_digest()
    stale = cache.exists() and (not stamp.is_file() or stamp.read_text().strip() != digest)
    if stale:
        shutil.rmtree(cache)
    cache.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest + "\n")
    return stale


def cell_timeout(config: Path = ROOT / "_config.yml") -> int:
    """The book build's per-cell timeout (`execute.timeout` in _config.yml), so both agree."""
    import yaml

    return int((yaml.safe_load(config.read_text()).get("execute") or {}).get("timeout", 600))


def run(notebooks: list[Path], cache: Path | None, keep: bool = False) -> list[str]:
    """Every notebook from the wheel in an empty folder; the names of those that failed."""
    work = Path(tempfile.mkdtemp(prefix="lie_cam-colab-"))
    failed, timeout, start = [], cell_timeout(), time.perf_counter()
    if cache is not None and prune_cache(cache):
        print(f"{cache}: executed with other sources, emptied")
    try:
        wheel = build_wheel(work / "wheel")
        python = fresh_venv(work / "venv", wheel)
        runner = work / "runner.py"
        shutil.copy(Path(__file__), runner)
        print(f"wheel {wheel.name} ({wheel.stat().st_size / 1e6:.1f} MB, {len(zipfile.ZipFile(wheel).namelist())} "
              f"files) in a fresh environment, {time.perf_counter() - start:.0f} s", flush=True)
        for notebook in notebooks:
            t0 = time.perf_counter()
            executed, why = run_chapter(notebook, python, runner, work / "chapters" / notebook.stem, timeout)
            seconds = time.perf_counter() - t0
            print(f"{notebook.name}: {'ok' if executed else 'FAILED'} ({seconds:.0f} s)", flush=True)
            if executed is None:
                failed.append(notebook.name)
                print(why, file=sys.stderr, flush=True)
            elif cache is not None:
                cache_executed(executed, notebook, cache, seconds)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{len(notebooks) - len(failed)} of {len(notebooks)} chapters ran from the wheel in an empty folder "
          f"({time.perf_counter() - start:.0f} s)" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="chapters to run (default: every book/*.ipynb)")
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"jupyter-cache to fill (default {CACHE})")
    parser.add_argument("--no-cache", action="store_true", help="do not put the executed notebooks in a cache")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (wheel, venv, chapters)")
    parser.add_argument("--prune-cache", action="store_true",
                        help="only empty the cache if it was filled with other sources (make book runs this)")
    parser.add_argument("--execute-here", metavar="NAME", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=int, default=600, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.execute_here:
        return execute_here(args.execute_here, args.timeout)
    if args.prune_cache:
        if prune_cache(args.cache.resolve()):
            print(f"{args.cache}: executed with other sources, emptied")
        return 0
    notebooks = [p.resolve() for p in args.notebooks] or sorted((ROOT / "book").glob("*.ipynb"))
    bad = [str(p) for p in notebooks if p.suffix != ".ipynb" or not p.is_file()]
    if bad:
        print(f"colab_path.py: notebooks must be existing .ipynb files, got {', '.join(bad)}", file=sys.stderr)
        return 2
    return 1 if run(notebooks, None if args.no_cache else args.cache.resolve(), args.keep) else 0


if __name__ == "__main__":
    sys.exit(main())
