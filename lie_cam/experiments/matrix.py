"""Which explainers lie: the CAM-method x attack matrix (`python -m lie_cam explainers --out DIR`).

Every explainer of `lie_cam.audit.explainers` is run on the original network and on each attack of
the registry (`lie_cam.attacks.ATTACKS`: T1-T4, T4 with and without stickers, and the adapted attacks),
hooked at the explained layer and at the trunk's last ReLU, and each cell gets a verdict
(`lie_cam.audit.explainers.verdict`). `run_matrix` computes any part of it in memory;
`run_explainers` is the command, and writes the only files.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from lie_cam.anatomy import cut_at_a
from lie_cam.attacks import networks
from lie_cam.audit.explainers import (EXPLAINERS, LAYERS, NORMALIZATIONS, TAU, VERDICTS, Explainer, explain, mean_l1,
                                      unit_maps, verdict)
from lie_cam.book import setup
from lie_cam.data import paste_stickers
from lie_cam.experiments.output import check_output_dir, staged_output
from lie_cam.metrics import pointing_hits
from lie_cam.plotting import FONT, WIDTH, markdown_table

__all__ = ["CASES", "ROW_KEYS", "MATRIX_FILES", "Matrix", "run_matrix", "matrix_markdown", "verdict_figure", "run_explainers",
           "write_matrix", "load_matrix"]

MATRIX_FILES = ("matrix.json", "explainers.json", "matrix.md", "verdicts.png")  # what `write_matrix` writes
ROW_KEYS = ("library", "method", "attack", "normalization", "layer", "l1_to_target", "l1_to_honest",
            "pointing", "verdict", "n")


@dataclass
class _Case:
    attack: str
    network: str
    sticker: bool


_CASES = {
    "T1": _Case("T1", "T1", False), "T2": _Case("T2", "T2", False), "T3": _Case("T3", "T3", False),
    "T4-clean": _Case("T4-clean", "T4", False), "T4-sticker": _Case("T4-sticker", "T4", True),
    "T1-adapted": _Case("T1-adapted", "T1-adapted", False),
    "T4-adapted-sticker": _Case("T4-adapted-sticker", "T4-adapted", True),
}
# The matrix's columns: each attack of the registry on clean images, and the triggered ones with stickers.
CASES = tuple(_CASES)


@dataclass
class _Maps:
    default: torch.Tensor | None = None
    raw: torch.Tensor | None = None
    error: str | None = None


def _call(e: Explainer, model: nn.Module, where: str, x: torch.Tensor, classes: torch.Tensor,
          chunk: int) -> _Maps:
    try:
        return _Maps(*explain(e, model, x, classes, where, chunk))
    except Exception as error:  # a crash is a result: the row says `error` and why
        message = " ".join(str(error).split()) or repr(error)
        return _Maps(error=f"{type(error).__name__}: {message[:300]}")


def _frozen_trunk(net: nn.Module) -> nn.Module:
    """requires_grad=False on the parameters below the last conv layer (of a copy the caller owns).

    Every method here differentiates the scores w.r.t. A (or not at all), and those gradients do not
    depend on the flag; it only spares the libraries' backward the trunk's weight gradients."""
    trunk = net.trunk if hasattr(net, "trunk") and hasattr(net, "head") else cut_at_a(net).trunk
    for p in trunk.parameters():
        p.requires_grad_(False)
    return net


def _sticker_masks(corners: list, size: int, sticker: int = 14) -> torch.Tensor:
    masks = torch.zeros(len(corners), size, size, dtype=torch.bool)
    for b, positions in enumerate(corners):
        for r, c in positions:
            masks[b, r:r + sticker, c:c + sticker] = True
    return masks


@dataclass
class Matrix:
    """Rows (dicts with exactly `ROW_KEYS`), the message of every `error` row keyed by
    "library/method/attack/layer", and how they were made."""

    rows: list[dict]
    errors: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def cell(self, library: str, method: str, attack: str, normalization: str = "max",
             layer: str = "explained") -> dict:
        for r in self.rows:
            if (r["library"], r["method"], r["attack"], r["normalization"], r["layer"]) == (
                    library, method, attack, normalization, layer):
                return r
        raise KeyError(f"no row {library}/{method} {attack} {normalization} {layer}")


def run_matrix(model: nn.Module, x: torch.Tensor, masks: torch.Tensor | None = None,
               explainers: Sequence[Explainer] | None = None, attacks: Sequence[str] = CASES,
               layers: Sequence[str] = LAYERS, costly_limit: int | None = 4, chunk: int = 8,
               progress: Callable[[str], None] | None = None) -> Matrix:
    """The explainer x attack matrix on images x (B x 3 x 224 x 224, normalised) with object masks
    (B x 224 x 224, or None: no pointing). Each explainer explains the original network's predicted
    class. `costly` explainers (score/ablation) use the first `costly_limit` images (None: all)."""
    explainers = EXPLAINERS if explainers is None else tuple(explainers)
    unknown = [a for a in attacks if a not in _CASES]
    if unknown:
        raise ValueError(f"unknown attacks {unknown}: expected some of {list(CASES)}")
    bad_layers = [w for w in layers if w not in LAYERS]
    if bad_layers:
        raise ValueError(f"unknown layers {bad_layers}: expected some of {list(LAYERS)}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] < 1:
        raise ValueError(f"expected a non-empty B x 3 x H x W batch, got {getattr(x, 'shape', type(x).__name__)}")
    if model.training:
        raise ValueError("the model is in training mode: call model.eval() first (CAMs would vary from call to call)")
    model = _frozen_trunk(copy.deepcopy(model))
    names = list(dict.fromkeys(_CASES[a].network for a in attacks))
    nets = {name: _frozen_trunk(net) for name, net in networks(model, names, build="paper").items()}
    x_sticker, corners = paste_stickers(x, seeds=list(range(x.shape[0])))
    images = {False: x, True: x_sticker}
    sticker_masks = _sticker_masks(corners, x.shape[-1]).to(x.device)
    with torch.no_grad():
        classes = {s: model(images[s]).argmax(1) for s in (False, True)}
    rows: list[dict] = []
    errors: dict[str, str] = {}
    for e in explainers:
        n = x.shape[0] if not e.costly or costly_limit is None else min(costly_limit, x.shape[0])
        honest = {s: _call(e, model, "explained", images[s][:n], classes[s][:n], chunk)
                  for s in {_CASES[a].sticker for a in attacks}}
        for attack in attacks:
            case = _CASES[attack]
            net = nets[case.network]
            xs, cs = images[case.sticker][:n], classes[case.sticker][:n]
            reference = honest[case.sticker]
            for where in [w for w in layers if w in e.layers]:
                if progress is not None:
                    progress(f"{e.library}/{e.method} {attack} {where}")
                got = _call(e, net, where, xs, cs, chunk)
                error = reference.error or got.error
                for norm in NORMALIZATIONS:
                    row = {"library": e.library, "method": e.method, "attack": attack, "normalization": norm,
                           "layer": where, "l1_to_target": None, "l1_to_honest": None, "pointing": None,
                           "verdict": "error", "n": int(n)}
                    if error is not None:
                        errors[f"{e.library}/{e.method}/{attack}/{where}"] = error
                        rows.append(row)
                        continue
                    mine = got.default if norm == "default" else got.raw
                    ref = reference.default if norm == "default" else reference.raw
                    honest_unit = unit_maps(ref)
                    with torch.no_grad():
                        target = net.target_explanation(xs, honest=honest_unit.to(xs.dtype).to(xs.device))
                    row["l1_to_target"] = mean_l1(target.cpu(), mine)
                    row["l1_to_honest"] = mean_l1(ref, mine)
                    pointing_masks = sticker_masks[:n] if case.sticker else (None if masks is None else masks[:n])
                    if pointing_masks is not None:
                        row["pointing"] = float(pointing_hits(unit_maps(mine).float(), pointing_masks.cpu()).double().mean())
                    pixels = mine.shape[-1] * mine.shape[-2]
                    row["verdict"] = verdict(row["l1_to_target"], row["l1_to_honest"], pixels)
                    rows.append(row)
    return Matrix(rows=rows, errors=errors, settings={"images": int(x.shape[0]), "costly_limit": costly_limit, "tau": TAU,
                                       "attacks": list(attacks), "layers": list(layers)})


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


_SHORT = {"fooled": "F", "partial": "p", "immune": "·", "error": "E"}


def matrix_markdown(matrix: Matrix, normalization: str = "default") -> str:
    """One Markdown table of verdicts per layer: methods down, attacks across (F fooled, p partial,
    · immune, E error)."""
    rows = [r for r in matrix.rows if r["normalization"] == normalization]
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    out = []
    for where in dict.fromkeys(r["layer"] for r in rows):
        out.append(f"**{normalization} normalisation, hooked at `{where}`** (F fooled, p partial, · immune, E error)\n")
        table = {}
        for r in rows:
            if r["layer"] == where:
                row = table.setdefault((r["library"], r["method"]), {"library": r["library"], "method": r["method"]})
                row[r["attack"]] = _SHORT[r["verdict"]]
        out.append(markdown_table([{a: "-" for a in attacks} | row for row in table.values()],
                                  ["library", "method", *attacks]))
        out.append("")
    return "\n".join(out)


def _matrix_md_document(matrix: Matrix) -> str:
    s = matrix.settings
    head = [
        "# Which explainers lie: verdict matrix",
        "",
        f"{s.get('images')} images (score/ablation methods: the first {s.get('costly_limit')}), profile "
        f"{s.get('profile', '?')}, made by `python -m lie_cam explainers` in {s.get('seconds', float('nan')):.0f} s "
        f"with {s.get('versions', {})}.",
        "",
        f"Verdict (same for every cell, tau = {TAU} per pixel): **fooled** if the mean L1 of the max-normalised "
        "map to the attack's intended map is <= tau * N_A and not larger than its L1 to the same method's "
        "map on the original network; else **immune** if that L1 to the honest map is <= tau * N_A; else "
        "**partial**. **error**: the method raised (messages below and in explainers.json).",
        "",
    ]
    tail = ["## Errors", ""] + [f"- {key}: {msg}" for key, msg in matrix.errors.items()] if matrix.errors else []
    return "\n".join(head) + "\n" + matrix_markdown(matrix, "default") + "\n" + matrix_markdown(matrix, "max") + "\n" + "\n".join(tail) + "\n"


_COLOURS = {"fooled": "#d7301f", "partial": "#fdae61", "immune": "#1a9850", "error": "#bdbdbd"}


_LIBRARY_SHORT = {"pytorch-grad-cam": "pgc"}  # library names shortened in the figure's labels


def verdict_figure(matrix: Matrix, normalizations: Sequence[str] = NORMALIZATIONS):
    """Heat-map of the verdicts: one panel per normalisation, methods down (pytorch-grad-cam as "pgc"),
    attack x layer across."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows = matrix.rows
    methods = list(dict.fromkeys((r["library"], r["method"]) for r in rows))
    columns = list(dict.fromkeys((r["attack"], r["layer"]) for r in rows))
    cmap = ListedColormap([_COLOURS[v] for v in VERDICTS])
    # One panel a row, at most the text column's width, every label at the book's FONT: legible at
    # 400 px too (lie_cam.plotting's module docstring).
    fig = Figure(figsize=(WIDTH, (0.22 * len(methods) + 2.4) * len(normalizations) + 0.4), layout="constrained")
    axes = fig.subplots(len(normalizations), 1, squeeze=False)
    for ax, norm in zip(axes[:, 0], normalizations):
        grid = torch.full((len(methods), len(columns)), float("nan"))
        for r in rows:
            if r["normalization"] == norm:
                grid[methods.index((r["library"], r["method"])), columns.index((r["attack"], r["layer"]))] = \
                    VERDICTS.index(r["verdict"])
        ax.imshow(grid.numpy(), cmap=cmap, vmin=-0.5, vmax=len(VERDICTS) - 0.5, aspect="auto")
        ax.set_xticks(range(len(columns)), [f"{a} @{'A' if w == 'explained' else 'ReLU'}" for a, w in columns],
                      rotation=90, fontsize=FONT)
        ax.set_yticks(range(len(methods)), [f"{_LIBRARY_SHORT.get(lib, lib)}: {m}" for lib, m in methods], fontsize=FONT)
        ax.set_title(f"{norm} normalisation", fontsize=FONT)
        ax.set_xticks([i - 0.5 for i in range(1, len(columns))], minor=True)
        ax.set_yticks([i - 0.5 for i in range(1, len(methods))], minor=True)
        ax.grid(which="minor", color="white", linewidth=0.6)
        ax.tick_params(which="minor", length=0)
    fig.legend(handles=[Patch(color=_COLOURS[v], label=v) for v in VERDICTS], loc="outside lower center", ncol=4,
               fontsize=FONT, frameon=False)
    return fig


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("grad-cam", "captum", "torchcam", "torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def run_explainers(out: str | os.PathLike, limit: int = 32, profile: str = "embedded", device: str | None = "cpu",
                   costly_limit: int | None = 4, seed: int = 0, progress: bool = True,
                   explainers: Sequence[Explainer] | None = None, attacks: Sequence[str] = CASES) -> Matrix:
    """`python -m lie_cam explainers`: the matrix on the first `limit` test images of `profile`,
    written to out/matrix.json, out/explainers.json, out/matrix.md and out/verdicts.png. Validates
    before any work, `out` included."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"--limit must be a positive number of images, got {limit!r}")
    if costly_limit is not None and (isinstance(costly_limit, bool) or not isinstance(costly_limit, int) or costly_limit < 1):
        raise ValueError(f"--costly-limit must be a positive number of images, got {costly_limit!r}")
    check_output_dir(out, MATRIX_FILES)
    missing = [m for m in ("pytorch_grad_cam", "captum", "torchcam") if _missing(m)]
    if missing:
        raise RuntimeError(f"{missing} not installed: pip install --constraint constraints.txt '.[explainers]'")
    torch.manual_seed(seed)
    start = time.perf_counter()
    ch = setup(n=limit, profile=profile, device=device)
    say = (lambda m: print(m, flush=True)) if progress else None
    matrix = run_matrix(ch.model, ch.x, ch.masks, explainers=explainers, attacks=attacks, costly_limit=costly_limit,
                        progress=say)
    matrix.settings.update(profile=profile, seconds=time.perf_counter() - start, versions=_versions(),
                           device=str(ch.device), threads=torch.get_num_threads())
    write_matrix(matrix, out)
    return matrix


def write_matrix(matrix: Matrix, out: str | os.PathLike) -> None:
    """out/matrix.json (the rows), out/explainers.json (settings and error messages), out/matrix.md and
    out/verdicts.png, moved into place together once all are written (`staged_output`)."""
    fig = verdict_figure(matrix)  # a bare Figure (no pyplot): nothing to close
    with staged_output(out, MATRIX_FILES) as stage:
        (stage / "matrix.json").write_text(json.dumps(matrix.rows, indent=1, allow_nan=False))
        (stage / "explainers.json").write_text(json.dumps({"settings": matrix.settings, "errors": matrix.errors},
                                                          indent=1))
        (stage / "matrix.md").write_text(_matrix_md_document(matrix))
        fig.savefig(stage / "verdicts.png", dpi=120)


def load_matrix(folder: str | os.PathLike) -> Matrix:
    """A `Matrix` from the matrix.json and explainers.json that `run_explainers` wrote into `folder`
    (run.json in folders written before the run record had its own name)."""
    folder = Path(folder)
    rows = json.loads((folder / "matrix.json").read_text())
    if not isinstance(rows, list) or not all(isinstance(r, dict) and set(r) == set(ROW_KEYS) for r in rows):
        raise ValueError(f"{folder / 'matrix.json'} is not a list of rows with keys {list(ROW_KEYS)}")
    record = next((folder / n for n in ("explainers.json", "run.json") if (folder / n).exists()), None)
    run = json.loads(record.read_text()) if record is not None else {}
    return Matrix(rows=rows, errors=run.get("errors", {}), settings=run.get("settings", {}))


def _missing(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(module) is None
