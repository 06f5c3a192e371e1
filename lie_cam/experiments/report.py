"""Reporting a reproduction: the paper's numbers beside ours, tables, CSV, JSON and figures.

`Reproduction` holds what a run measured (`lie_cam.experiments.reproduce.run_reproduction` makes it):
one row per (network, data) with the paper's metrics (`lie_cam.metrics`), and the examples
drawn in Figures 1 and 3. `write(out)` produces table1/2 (.md, .csv), results.json (the rows),
reproduce.json (how the run was made: settings, among them Grad-CAM's `gradient`; world_size,
images_per_rank, the torch CPU `threads` of each process, seconds) and the figures, all at once
(`lie_cam.experiments.output.staged_output`: after a Ctrl-C the folder holds all of them or the
earlier run's).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from lie_cam import plotting
from lie_cam.experiments import output
from lie_cam.plotting import markdown_table

__all__ = ["PAPER_TABLE1", "PAPER_TABLE2", "COLUMNS", "OUTPUT_FILES", "Reproduction", "check_output_dir",
           "ours_and_paper_table"]

# Published numbers (accuracy, score change, L1); None where the paper prints "-".
PAPER_TABLE1 = {
    "original": (0.71592, None, None),
    "T1": (0.71594, 0.01713, 0.00513),
    "T2": (0.71594, 0.00454, 0.01079),
    "T3": (0.71592, 0.00000, 0.05932),
}
PAPER_TABLE2 = {
    ("clean", "original"): (0.71592, None, None),
    ("clean", "T4"): (0.71592, 0.00000, 0.00000),
    ("sticker", "original"): (0.69048, None, None),
    ("sticker", "T4"): (0.69048, 0.00000, 0.00006),
}
COLUMNS = (("accuracy", "Accuracy"), ("score_change", "‖y_o − y_n‖∞"), ("l1", "‖Ĩ_T − Ĩ_n‖₁"))
OUTPUT_FILES = ("table1.md", "table1.csv", "table2.md", "table2.csv", "results.json", "reproduce.json",
                "figure1.png", "figure3.png")


def check_output_dir(out: str | Path) -> Path:
    """`out` as an absolute Path if the reproduction can write its files there (ValueError, OSError
    naming the path otherwise; writes nothing): `lie_cam.experiments.output.check_output_dir`."""
    return output.check_output_dir(out, OUTPUT_FILES)


@dataclass
class Reproduction:
    """What a run measured: `rows` (one dict per network and data), `examples` for the figures
    (empty on the processes other than rank 0 of a distributed run), `run` how it was made."""

    profile: str
    description: str
    rows: list[dict]
    examples: dict
    seconds: float
    settings: dict
    run: dict = field(default_factory=dict)

    def row(self, network: str, data: str = "clean") -> dict:
        for row in self.rows:
            if row["network"] == network and row["data"] == data:
                return row
        raise KeyError((network, data))

    def table1(self) -> list[dict]:
        return [{"network": network, **_ours_and_paper(self.row(network, "clean"), paper)}
                for network, paper in PAPER_TABLE1.items()]

    def table2(self) -> list[dict]:
        return [{"data": data, "network": network, **_ours_and_paper(self.row(network, data), paper)}
                for (data, network), paper in PAPER_TABLE2.items()]

    def table1_markdown(self) -> str:
        return _markdown(self.table1(), ["network"], f"Table 1 ({self.description}; paper: ILSVRC2012 val)")

    def table2_markdown(self) -> str:
        return _markdown(self.table2(), ["data", "network"], f"Table 2 ({self.description}; paper: ILSVRC2012 val)")

    def write(self, out: str | Path) -> list[Path]:
        """table1.md/.csv, table2.md/.csv, results.json, reproduce.json, figure1.png, figure3.png in `out`,
        moved into place together once all are written (a figure this run does not draw is removed)."""
        with output.staged_output(out, OUTPUT_FILES) as stage:
            written = [Path(out).expanduser().absolute() / p.name for p in self._write_into(stage)]
        return written

    def _write_into(self, out: Path) -> list[Path]:
        written = []
        for name, rows, text in (("table1", self.table1(), self.table1_markdown()),
                                 ("table2", self.table2(), self.table2_markdown())):
            (out / f"{name}.md").write_text(text + "\n")
            with open(out / f"{name}.csv", "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            written += [out / f"{name}.md", out / f"{name}.csv"]
        (out / "results.json").write_text(json.dumps(self.rows, indent=2) + "\n")
        run = {"profile": self.profile, "description": self.description, "seconds": self.seconds,
               "settings": self.settings, **self.run}
        (out / "reproduce.json").write_text(json.dumps(run, indent=2) + "\n")
        written += [out / "results.json", out / "reproduce.json"]
        if self.examples:
            written += self.write_figures(out)
        return written

    def write_figures(self, out: Path) -> list[Path]:
        ex = self.examples
        fig1 = plotting.figure1(ex["image"], ex["maps"])
        fig3 = plotting.figure3(ex["image"], ex["stickered_image"], ex["maps_clean"], ex["maps_sticker"])
        paths = [out / "figure1.png", out / "figure3.png"]
        for figure, path in zip((fig1, fig3), paths):
            figure.savefig(path, dpi=110, bbox_inches="tight")
        return paths


def _ours_and_paper(row: dict, paper: tuple) -> dict:
    out = {}
    for (key, _), published in zip(COLUMNS, paper):
        out[key] = row[key]
        out[f"paper_{key}"] = published
    out["n"] = row["n"]
    if row.get("pointing") is not None:
        out["pointing"] = row["pointing"]
    return out


def ours_and_paper_table(rows: Sequence[Mapping[str, object]], keys: Sequence[str],
                         metrics: Mapping[str, str] | None = None, floatfmt: str = ".5f") -> str:
    """The one "ours beside the paper's" table, narrow enough for the text column: the `keys` columns
    as they are, then one column per metric {row key: header} (default: `COLUMNS`) holding
    "ours / paper" (row[key] and row["paper_" + key]; None as a dash), and "pointing" when the rows have it."""
    metrics = dict(COLUMNS) if metrics is None else metrics

    def cell(v: object) -> str:
        return "–" if v is None else format(v, floatfmt) if isinstance(v, float) else str(v)

    out = []
    for r in rows:
        row: dict[str, object] = {k: r[k] for k in keys}
        for key, header in metrics.items():
            row[f"{header}<br>ours / paper"] = f"{cell(r.get(key))} / {cell(r.get('paper_' + key))}"
        if any("pointing" in x for x in rows):
            row["pointing"] = cell(r.get("pointing"))
        out.append(row)
    return markdown_table(out)


def _markdown(rows: list[dict], keys: list[str], title: str) -> str:
    return "\n".join([f"**{title}**", "", ours_and_paper_table(rows, keys), "",
                      f"n = {rows[0]['n']} images. Score change: per image max over classes, mean over images. "
                      "L1: per image sum over the feature-map pixels, mean over images."])
