"""The chapters as files: the Colab path generated from _config.yml, hidden set-up and asserts,
every chapter's opening, summary and exercises, figures that are glued where they are shown."""

import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import colab_cells  # noqa: E402  (tools/ is not a package)

NOTEBOOKS = colab_cells.notebooks(ROOT)
HIDDEN = {"remove-input", "hide-input", "remove-cell", "hide-cell"}


def read(path):
    return nbformat.read(path, as_version=4)


def tags(cell):
    return set(cell.metadata.get("tags", []))


def test_there_are_chapters():
    assert len(NOTEBOOKS) >= 9


def test_the_repository_url_is_read_from_config():
    url, branch = colab_cells.repository(ROOT / "_config.yml")
    assert url.startswith("https://") and branch
    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert config["html"]["use_repository_button"] is True  # the launch buttons use repository.url


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_install_cell_and_metadata_match_config(path):
    """What `python tools/colab_cells.py --check` checks: the note, the install cell and the Colab
    metadata are exactly what _config.yml generates (run tools/colab_cells.py to update them)."""
    nb = read(path)
    url, branch = colab_cells.repository(ROOT / "_config.yml")
    expected = colab_cells.sync(read(path), url, branch)
    assert nbformat.writes(nb) == nbformat.writes(expected), f"{path.name}: run `python tools/colab_cells.py`"
    assert nb.metadata["accelerator"] == "GPU" and nb.metadata["colab"]["gpuType"]
    ids = [c.id for c in nb.cells]
    install = nb.cells[ids.index(colab_cells.INSTALL_ID)]
    assert ids.index(colab_cells.NOTE_ID) + 1 == ids.index(colab_cells.INSTALL_ID)
    assert "hide-cell" in tags(install) and "Running this chapter" in nb.cells[ids.index(colab_cells.NOTE_ID)].source
    source = install.source
    assert f'REPOSITORY = "{url}"' in source and f'BRANCH = "{branch}"' in source
    assert re.search(r'f"lie_cam(\[[a-z,]+\])? @ git\+\{REPOSITORY\}@\{BRANCH\}"', source)
    assert "output.enable_custom_widget_manager()" in source
    assert " -e" not in source and "sys.path" not in source and "git clone" not in source
    # the set-up cell follows the install cell
    assert "parameters" in tags(nb.cells[ids.index(colab_cells.INSTALL_ID) + 1])


def test_no_other_copy_of_the_repository_url():
    url, _ = colab_cells.repository(ROOT / "_config.yml")
    for path in NOTEBOOKS:
        for cell in read(path).cells:
            if cell.get("id") != colab_cells.INSTALL_ID:
                assert "github.com/lie-cam" not in cell.source and url not in cell.source, (path.name, cell.id)
    for path in (ROOT / "book").glob("*.md"):
        assert url not in path.read_text(), path.name


def test_a_fork_is_one_setting(tmp_path):
    """Pointing the book at a fork changes _config.yml only; the generator rewrites every install cell."""
    config = tmp_path / "_config.yml"
    text = (ROOT / "_config.yml").read_text()
    fork = "https://github.com/someone/lie_cam-fork"
    config.write_text(re.sub(r"(repository:\s*\n\s*url:\s*)\S+", rf"\g<1>{fork}", text))
    url, branch = colab_cells.repository(config)
    assert url == fork
    nb = colab_cells.sync(read(NOTEBOOKS[0]), url, branch)
    install = next(c for c in nb.cells if c.id == colab_cells.INSTALL_ID)
    assert f'REPOSITORY = "{fork}"' in install.source
    # syncing twice changes nothing, and the old cells are replaced rather than duplicated
    again = colab_cells.sync(nbformat.from_dict(nb), url, branch)
    assert nbformat.writes(again) == nbformat.writes(nb)
    assert sum(c.id == colab_cells.INSTALL_ID for c in nb.cells) == 1
    config.write_text(text.replace("url: https://", "url: ftp://"))
    with pytest.raises(ValueError, match="https"):
        colab_cells.repository(config)


def test_extras_follow_the_imports():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from captum.attr import LayerGradCam")]
    assert colab_cells.extras(nb) == ["captum>=0.7"]
    nb.cells = [nbformat.v4.new_code_cell("x = 1  # no captum import here")]
    assert colab_cells.extras(nb) == []


def top_level_asserts(source):
    return [line for line in source.splitlines() if re.match(r"^\s*assert\b", line)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_structure(path):
    """Opens with a title and what it teaches; set-up and asserts hidden from the HTML; closes with a
    summary and 2-4 exercises whose solutions are hidden dropdowns."""
    nb = read(path)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and re.match(r"\(ch-[a-z0-9-]+\)=\n# ", first.source), path.name
    assert "**In this chapter:**" in first.source, f"{path.name}: say what the chapter teaches"
    for cell in nb.cells:
        if cell.cell_type == "code" and top_level_asserts(cell.source):
            assert tags(cell) & HIDDEN, f"{path.name}: cell {cell.id} shows asserts; move them to a remove-input cell"
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    assert any(s.startswith("## Summary") for s in markdown), f"{path.name}: no ## Summary"
    assert markdown[-1].startswith("## Exercises"), f"{path.name}: the last cell must be ## Exercises"
    n = len(re.findall(r"^\*\*Exercise \d+\.\*\*", markdown[-1], flags=re.M))
    solutions = len(re.findall(r"^:::\{admonition\} Solution\n:class: dropdown$", markdown[-1], flags=re.M))
    assert 2 <= n <= 4 and solutions == n, (path.name, n, solutions)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_glued_figure_is_made(path):
    nb = read(path)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    names = re.findall(r"```\{glue:figure\} (\S+)", markdown)
    for name in names:
        assert f'"{name}"' in code, f"{path.name}: {name} is never glued"


def test_landing_page_has_a_teaser_figure():
    index = (ROOT / "book" / "index.md").read_text()
    images = re.findall(r"```\{figure\} (\S+)", index)
    assert images, "book/index.md shows no figure"
    for image in images:
        png = (ROOT / "book" / image)
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", image


def test_teaser_script_draws_honest_and_lies():
    import make_teaser  # tools/make_teaser.py
    from lie_cam.plotting import panel_axes

    fig = make_teaser.teaser()
    titles = [ax.get_title().replace("\n", " ") for ax in panel_axes(fig)]  # wrapped to the panel
    assert titles == ["image", "honest Grad-CAM", "T2: a smiley", "T4: the stickers"]
    notes = [ax.get_xlabel() for ax in panel_axes(fig)]
    assert len(set(n.split()[-1] for n in notes)) == 1  # one class, predicted by all three networks


@pytest.mark.parametrize("name", ["08_explainers.ipynb", "13_real_model.ipynb"])
def test_the_install_cell_installs_only_what_is_missing(name, monkeypatch):
    """Run each install cell as Colab would (google.colab imported, pip recorded, not run): where
    lie_cam and the chapter's packages are importable it installs nothing, so it never stops a
    chapter; where lie_cam is missing it asks pip for lie_cam from _config.yml's repository."""
    import importlib.util
    import subprocess
    import types

    url, branch = colab_cells.repository(ROOT / "_config.yml")
    source = next(c.source for c in read(ROOT / "book" / name).cells if c.get("id") == colab_cells.INSTALL_ID)
    colab, output = types.ModuleType("google.colab"), types.SimpleNamespace(enabled=0)
    output.enable_custom_widget_manager = lambda: setattr(output, "enabled", output.enabled + 1)
    colab.output = output
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setenv("LIE_CAM_PROFILE", "embedded")
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: calls.append(args))
    exec(compile(source, name, "exec"), {})
    assert calls == [] and output.enabled == 1  # everything importable here: no pip

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "lie_cam" else real(m, *a))
    exec(compile(source, name, "exec"), {})
    (call,) = calls
    assert call[:4] == [sys.executable, "-m", "pip", "install"] and output.enabled == 2
    assert any(arg.startswith("lie_cam[") and arg.endswith(f" @ git+{url}@{branch}") for arg in call), call
