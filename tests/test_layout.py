"""The house: a flat core, wings around it, experiments above, the command line on top; one definition
of each shared fact; short functions and modules; chapter files numbered as the book numbers them.

Floors (a module may import its own floor or a lower one, never a higher one; no import circle):
    0 core         lie_cam/*.py (gradcam, anatomy, models, data, metrics, plotting, ...)
    1 wings        lie_cam/attacks, lie_cam/audit, lie_cam/explore
    2 experiments  lie_cam/experiments (the only modules that write result files)
    3 cli          lie_cam/cli.py, lie_cam/__main__.py
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lie_cam"
WINGS = ("attacks", "audit", "explore")
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 660


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def floor(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("cli", "__main__"):
        return 3 if len(parts) > 1 else 0  # the package's __init__ only loads submodules on first use
    if parts[1] == "experiments":
        return 2
    if parts[1] in WINGS:
        return 1
    return 0


def imports(path: Path) -> set[str]:
    """The lie_cam modules `path` imports, at any depth of its code (a submodule named in a
    `from package import name` counts as that submodule)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lie_cam")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lie_cam"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


GRAPH = {m: imports(p) - {m} for m, p in MODULES.items()}


def test_the_layout_has_its_floors():
    assert {"lie_cam.anatomy", "lie_cam.gradcam", "lie_cam.models", "lie_cam.attacks.registry",
            "lie_cam.audit.detectors", "lie_cam.experiments.reproduce", "lie_cam.explore.measure"} <= set(MODULES)
    for gone in ("surgery", "hijack", "branches", "detectors", "explainers", "precision", "widgets", "sliders",
                 "reproduce", "engine", "report", "zoo", "adapters", "distributed"):
        assert not (PACKAGE / f"{gone}.py").exists(), f"lie_cam/{gone}.py moved into a subpackage: no shim"


def test_no_module_imports_a_higher_floor():
    upward = [(m, i) for m, targets in GRAPH.items() for i in targets
              if i != "lie_cam" and floor(i) > floor(m)]
    assert upward == [], "a module imports from a higher floor (core < wings < experiments < cli)"


def test_no_import_circle():
    state: dict[str, int] = {}
    circles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(GRAPH.get(m, ())):
            if n == "lie_cam" or n not in GRAPH:
                continue
            if state.get(n) == 1:
                circles.append(path[path.index(n):] + [n] if n in path else path + [n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert circles == []


def test_the_layout_checks_can_fail():
    assert floor("lie_cam.experiments.reproduce") > floor("lie_cam.attacks.t1_flat") > floor("lie_cam.gradcam")
    assert floor("lie_cam.cli") > floor("lie_cam.experiments.matrix")
    assert "lie_cam.anatomy" in GRAPH["lie_cam.attacks.manipulated"]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_functions_and_modules_are_short(path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(source))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def python_files() -> list[Path]:
    return [*sorted(PACKAGE.rglob("*.py")), *sorted((ROOT / "tests").rglob("*.py")),
            *sorted((ROOT / "tools").glob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py"))]


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_name_across_modules(path):
    """No `from lie_cam.x import _y` and no `module._y` on a lie_cam module; tests use fixtures,
    not `from conftest import`."""
    tree = ast.parse(path.read_text())
    aliases = set()
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "conftest" or node.module.startswith("test_"):
                bad.append(f"from {node.module} import ...")
            if node.module.startswith("lie_cam"):
                bad += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
                aliases |= {a.asname or a.name for a in node.names if f"{node.module}.{a.name}" in MODULES}
        elif isinstance(node, ast.Import):
            aliases |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("lie_cam")}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name) and node.value.id in aliases):
            bad.append(f"{node.value.id}.{node.attr}")
    assert bad == []


def assignments(name: str) -> list[str]:
    """The package modules that bind `name` at their top level."""
    found = []
    for module, path in MODULES.items():
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                found.append(module)
    return found


@pytest.mark.parametrize("name,home", [
    ("PROFILES", "lie_cam.profiles"), ("STICKER_SEED", "lie_cam.data"), ("ATTACKS", "lie_cam.attacks.registry"),
    ("TECHNIQUES", "lie_cam.attacks.registry"), ("IMAGENET_MEAN", "lie_cam.normalization"),
])
def test_each_fact_is_defined_once(name, home):
    assert assignments(name) == [home]


def test_one_markdown_table_writer_and_one_cut_at_a():
    writers = [m for m, p in MODULES.items() if re.search(r"[\"']\|[\"'] \+ .*join|\"\|---", p.read_text())]
    assert writers == ["lie_cam.plotting"]
    cutters = [m for m, p in MODULES.items() if re.search(r"split_vgg\([^)]*\)\.trunk|\.last_conv, \*", p.read_text())]
    assert cutters == [], "cut the honest model at A with lie_cam.anatomy.cut_at_a"


def test_every_attack_is_built_from_the_registry():
    """Attack names are the registry's; no module but the registry calls a recipe with the paper's constants."""
    recipe_call = re.compile(r"\b(constant_flat|constant_image|semi_random|backdoor)\([^)]*c_[A-Z]=\d")
    callers = [m for m, p in MODULES.items() if recipe_call.search(p.read_text())]
    assert callers == []


def test_chapter_files_carry_their_chapter_number():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    chapters = [c["file"] for part in toc["parts"] if part.get("numbered") for c in part["chapters"]]
    assert chapters, "the numbered part of _toc.yml lists the chapters"
    for number, file in enumerate(chapters, start=1):
        assert Path(file).name.startswith(f"{number:02d}_"), f"chapter {number} is {file}"
    assert sorted(p.stem for p in (ROOT / "book").glob("*.ipynb")) == [Path(f).name for f in chapters]


def test_cross_references_name_chapters_by_label():
    """No hand-typed chapter number in a reference: {numref}`%s <ch-...>` or {doc}`file` instead."""
    typed = []
    for path in [*sorted((ROOT / "book").glob("*.ipynb")), ROOT / "book" / "index.md"]:
        text = path.read_text()
        typed += [f"{path.name}: {m}" for m in re.findall(r"\{doc\}`[^`<]*\d[^`<]*<[^`]*`", text)]
        typed += [f"{path.name}: {m}" for m in re.findall(r"[Cc]hapters? \d+", text)]
    assert typed == []


def writes_files(source: str) -> bool:
    """Whether the code calls something that writes a file: Path.write_text/write_bytes, savefig to a
    path (not to an in-memory buffer), safetensors' save_file, torch.save, or open(..., "w"/"a")."""
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        first = node.args[0] if node.args else None
        if name in ("write_text", "write_bytes", "save_file") or (
                name == "save" and isinstance(node.func, ast.Attribute) and getattr(node.func.value, "id", "") == "torch"):
            return True
        if name == "savefig" and not (isinstance(first, ast.Name) and first.id == "buffer"):
            return True
        if name == "open" and any(isinstance(a, ast.Constant) and str(a.value)[:1] in "wa" for a in node.args[1:2]):
            return True
    return False


def test_only_the_experiments_write_files():
    """The core and the wings return values; the experiments write result files. `train` writes the
    model it trained (and its recipe), the one exception the layout names."""
    writers = sorted(m for m, p in MODULES.items() if writes_files(p.read_text()) and floor(m) < 2)
    assert writers == ["lie_cam.train"]
    assert writes_files("path.write_text(text)") and writes_files("open(p, 'w')")
    assert not writes_files("fig.savefig(buffer, format='png')") and not writes_files("'use save_file(...)'")
