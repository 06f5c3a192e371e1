"""What the book's pages say about themselves, read from the sources (no execution): each captioned
figure shown once, a landing page whose tour names every chapter and that says how to cite the book."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "book").glob("*.ipynb"))
SHOW = re.compile(r"""\bshow\(.*,\s*["']([\w-]+)["']\s*\)\s*$""", re.S)


def shown_twice(notebook: dict) -> list[str]:
    """The glued figures whose cell also keeps its output: `plotting.show(fig, name)` displays the PNG in
    the cell *and* glues it for the `{glue:figure}`, so without `remove-output` (or `remove-cell`) the
    page shows an uncaptioned raw copy above the captioned figure."""
    captioned = set(re.findall(r"```\{glue:figure\} ([\w-]+)",
                               "\n".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "markdown")))
    twice = []
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        m = SHOW.search("".join(cell["source"]).strip())
        hidden = {"remove-output", "remove-cell"} & set(cell.get("metadata", {}).get("tags", []))
        if m and m.group(1) in captioned and not hidden:
            twice.append(m.group(1))
    return twice


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_each_captioned_figure_is_shown_once(path):
    assert shown_twice(json.loads(path.read_text())) == []


def test_shown_twice_finds_a_figure_cell_that_keeps_its_output():
    md = {"cell_type": "markdown", "source": ["```{glue:figure} fig-a\n", ":name: fig-a\n", "```"]}
    cell = {"cell_type": "code", "metadata": {}, "source": ['print("x")\n', 'show(fig, "fig-a")']}
    assert shown_twice({"cells": [cell, md]}) == ["fig-a"]
    cell["metadata"]["tags"] = ["remove-output"]
    assert shown_twice({"cells": [cell, md]}) == []


def test_the_tour_names_every_chapter():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    chapters = [Path(c["file"]).name for part in toc["parts"] if part.get("numbered") for c in part["chapters"]]
    index = (ROOT / "book" / "index.md").read_text()
    tour = index[:index.index("**How to read it.**")]
    missing = [c for c in chapters if f"{{doc}}`{c}`" not in tour]
    assert len(chapters) >= 13 and missing == []


def _render(text: str, url: str) -> str:
    """The page's substitutions as MyST renders them (Jinja2, with Sphinx's `env`), for a repository `url`:
    jupyter-book passes _config.yml's repository.url on as html_theme_options.repository_url."""
    import jinja2

    env = SimpleNamespace(config=SimpleNamespace(html_theme_options={"repository_url": url}))
    return jinja2.Environment().from_string(text).render(env=env)


@pytest.mark.parametrize("url", [None, "https://github.com/someone/lie_cam-fork"])
def test_the_landing_page_says_how_to_cite_the_book(url):
    """A BibTeX entry naming the repository of _config.yml and its GitHub Pages site, from that one
    setting: a fork's landing page cites the fork."""
    url = url or yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")
    owner, name = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+)", url).groups()
    index = (ROOT / "book" / "index.md").read_text()
    cite = _render(index[index.index("**How to cite it.**"):index.index("```{tableofcontents}")], url)
    entry = re.search(r"```\{parsed-literal\}\n(@\w+\{[\w_]+,.*?\n\})\n```", cite, re.S)
    assert entry, "book/index.md has no BibTeX entry in a parsed-literal block"
    bibtex = entry.group(1)
    for field in ("author", "title", "year", "url"):
        assert re.search(rf"^\s+{field}\s*=", bibtex, re.M), field
    assert f'"https://{owner}.github.io/{name}/"' in bibtex and f"Code: {url}" in bibtex
    assert max(len(line) for line in bibtex.splitlines()) <= 78  # fits the text column at 1280 px
