"""Reproduce the paper's Tables 1-2 and Figures 1 and 3.

Evaluates the original network and T1-T4 on clean images, and the original and T4 on
the same images with three stickers each, with the paper's metrics (`lie_cam.metrics`):
accuracy, mean over images of max_c |y_o - y_n|, mean over images of sum_ij |I~_T - I~_n|.
Targets I~_T: T1 a map of ones; T2 the smiley; T3 F(x)/max F(x); T4 F(x)/max F(x) where
the detector fires and the original network's explanation where it does not.

Profiles: "embedded" (the compact VGG-16 on the synthetic test split, offline), and for
online users "imagenette" / "imagenet" (torchvision's VGG-16 with ImageNet weights).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from lie_cam import surgery
from lie_cam.data import SPLITS, SyntheticScenes, paste_stickers
from lie_cam.engine import Evaluator
from lie_cam.gradcam import GradCAMResult
from lie_cam.metrics import l1_distance, pointing_hits, score_change, summarize, top1_correct

__all__ = [
    "PAPER_TABLE1",
    "PAPER_TABLE2",
    "PROFILES",
    "Reproduction",
    "run_reproduction",
]

PROFILES = ("embedded", "imagenette", "imagenet")
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
STICKER_SEED = 1_000_003  # sticker positions of image i are drawn from STICKER_SEED + i
EMBEDDED_DEFAULT_N = 2000


@dataclass
class _Accumulator:
    correct: list = field(default_factory=list)
    change: list = field(default_factory=list)
    l1: list = field(default_factory=list)
    hits: list = field(default_factory=list)
    alpha_extra: list = field(default_factory=list)

    def add(self, correct, change=None, l1=None, hits=None, alpha_extra=None) -> None:
        self.correct.append(correct.cpu())
        for name, value in (("change", change), ("l1", l1), ("hits", hits), ("alpha_extra", alpha_extra)):
            if value is not None:
                getattr(self, name).append(value.detach().cpu())

    def summary(self, pixels: int) -> dict:
        cat = lambda values: torch.cat(values) if values else None  # noqa: E731
        out = summarize(torch.cat(self.correct), cat(self.change), cat(self.l1), cat(self.hits), pixels)
        out["l1_median"] = cat(self.l1).double().median().item() if self.l1 else None
        # alpha_{K+1} <= 0: the explanation cannot be the lie (the sign caveat of T1/T2)
        out["alpha_extra_nonpositive"] = (cat(self.alpha_extra) <= 0).double().mean().item() if self.alpha_extra else None
        return out


@dataclass
class Reproduction:
    """What a run measured: `rows` (one dict per network and data), `examples` for the figures."""

    profile: str
    description: str
    rows: list[dict]
    examples: dict
    seconds: float
    settings: dict

    def row(self, network: str, data: str = "clean") -> dict:
        for row in self.rows:
            if row["network"] == network and row["data"] == data:
                return row
        raise KeyError((network, data))

    def table1(self) -> list[dict]:
        out = []
        for network, paper in PAPER_TABLE1.items():
            row = self.row(network, "clean")
            out.append({"network": network, **_ours_and_paper(row, paper)})
        return out

    def table2(self) -> list[dict]:
        out = []
        for (data, network), paper in PAPER_TABLE2.items():
            row = self.row(network, data)
            out.append({"data": data, "network": network, **_ours_and_paper(row, paper)})
        return out

    def table1_markdown(self) -> str:
        return _markdown(self.table1(), ["network"], f"Table 1 ({self.description}; paper: ILSVRC2012 val)")

    def table2_markdown(self) -> str:
        return _markdown(self.table2(), ["data", "network"], f"Table 2 ({self.description}; paper: ILSVRC2012 val)")

    def write(self, out: str | Path) -> list[Path]:
        """table1.md/.csv, table2.md/.csv, results.json, figure1.png, figure3.png in `out`."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
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
        written.append(out / "results.json")
        written += self.write_figures(out)
        return written

    def write_figures(self, out: Path) -> list[Path]:
        from lie_cam import plotting

        ex = self.examples
        fig1 = plotting.figure1(ex["image"], ex["maps"])
        fig3 = plotting.figure3(ex["image"], ex["stickered_image"], ex["maps_clean"], ex["maps_sticker"])
        paths = [out / "figure1.png", out / "figure3.png"]
        for figure, path in zip((fig1, fig3), paths):
            figure.savefig(path, dpi=110, bbox_inches="tight")
        return paths


COLUMNS = [("accuracy", "Accuracy"), ("score_change", "‖y_o − y_n‖∞"), ("l1", "‖Ĩ_T − Ĩ_n‖₁")]


def _ours_and_paper(row: dict, paper: tuple) -> dict:
    out = {}
    for (key, _), published in zip(COLUMNS, paper):
        out[key] = row[key]
        out[f"paper_{key}"] = published
    out["n"] = row["n"]
    if row.get("pointing") is not None:
        out["pointing"] = row["pointing"]
    return out


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.5f}"


def _markdown(rows: list[dict], keys: list[str], title: str) -> str:
    has_pointing = any("pointing" in row for row in rows)
    header = [k.capitalize() for k in keys]
    for _, label in COLUMNS:
        header += [f"{label} (ours)", f"{label} (paper)"]
    if has_pointing:
        header.append("Pointing (ours)")
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row[k]) for k in keys]
        for key, _ in COLUMNS:
            cells += [_fmt(row[key]), _fmt(row[f"paper_{key}"])]
        if has_pointing:
            cells.append(_fmt(row.get("pointing")))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"n = {rows[0]['n']} images. Score change: per image max over classes, mean over images. "
                 "L1: per image sum over the feature-map pixels, mean over images.")
    return "\n".join(lines)


def _batches(profile: str, data: str | None, limit: int | None, batch_size: int, workers: int | None,
             device: torch.device) -> tuple[Iterator[tuple], int, str]:
    """(iterator of (x, labels, masks or None, first index), number of images, description)."""
    from lie_cam.imagenet import load_profile, make_loader

    if profile == "embedded":
        n = EMBEDDED_DEFAULT_N if limit is None else int(limit)
        loader = make_loader(SyntheticScenes("test", n), batch_size=batch_size, workers=workers, device=str(device))

        def scenes():
            start = 0
            for x, y, masks in loader:
                yield x, y, masks, start
                start += x.shape[0]

        return scenes(), n, f"embedded compact VGG-16 on {n} synthetic test scenes (seeds {SPLITS['test']}+)"
    dataset, description = load_profile(profile, data=data, limit=limit)
    loader = make_loader(dataset, batch_size=batch_size, workers=workers, device=str(device))

    def stream():
        start = 0
        for x, y in loader:
            yield x, y, None, start
            start += x.shape[0]

    return stream(), len(dataset), description


def _load_model(profile: str, checkpoint: str | None) -> torch.nn.Module:
    from lie_cam.models import load_embedded, load_vgg16

    if profile == "embedded":
        return load_embedded() if checkpoint is None else load_embedded(checkpoint)
    return load_vgg16(checkpoint)


def _normalized_target(network: surgery.ManipulatedVGG, result: GradCAMResult, honest: GradCAMResult) -> torch.Tensor:
    return network.target_explanation(extra=result.extra, honest=honest.normalized)


def run_reproduction(
    profile: str = "embedded",
    data: str | None = None,
    limit: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    out: str | Path | None = None,
    batch_size: int = 50,
    checkpoint: str | None = None,
    autocast_dtype: torch.dtype | None = None,
    tf32: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> Reproduction:
    """Run the tables' evaluation and (if `out` is given) write the tables, results.json and figures."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    from lie_cam.models import try_gpu

    device = torch.device(device) if device is not None else try_gpu()
    if device.type == "cuda":  # fidelity first: TF32 would change the scores in the 3rd decimal
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    started = time.time()
    batches, n, description = _batches(profile, data, limit, batch_size, workers, device)  # data errors first
    model = _load_model(profile, checkpoint).to(device=device, dtype=dtype)
    model = model.to(memory_format=torch.channels_last)
    networks = surgery.paper_networks(model)
    evaluator = Evaluator(model, networks, autocast_dtype=autocast_dtype)
    pixels = surgery.feature_size(model) ** 2
    clean = {name: _Accumulator() for name in evaluator.names}
    stickered = {name: _Accumulator() for name in ("original", "T4")}
    examples: dict = {}
    iterator = batches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, total=-(-n // batch_size), desc=f"reproduce {profile}", unit="batch")
    for x, labels, masks, start in iterator:
        x = x.to(device=device, dtype=dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True) if masks is not None else None
        results = evaluator.run(x)
        honest = results["original"]
        for name, result in results.items():
            hits = pointing_hits(result.maps, masks) if masks is not None else None
            if name == "original":
                clean[name].add(top1_correct(result.logits, labels), hits=hits)
                continue
            target = _normalized_target(networks[name], result, honest)
            clean[name].add(top1_correct(result.logits, labels), score_change(honest.logits, result.logits),
                            l1_distance(target, result.normalized), hits, result.alpha[:, -1])
        seeds = [STICKER_SEED + start + i for i in range(x.shape[0])]
        x_sticker, _ = paste_stickers(x, seeds)
        sticker_results = evaluator.run(x_sticker, names=["original", "T4"])
        honest_s, lie_s = sticker_results["original"], sticker_results["T4"]
        hits_o = pointing_hits(honest_s.maps, masks) if masks is not None else None
        hits_4 = pointing_hits(lie_s.maps, masks) if masks is not None else None
        stickered["original"].add(top1_correct(honest_s.logits, labels), hits=hits_o)
        stickered["T4"].add(top1_correct(lie_s.logits, labels), score_change(honest_s.logits, lie_s.logits),
                            l1_distance(_normalized_target(networks["T4"], lie_s, honest_s), lie_s.normalized), hits_4,
                            lie_s.alpha[:, -1])
        if not examples:
            examples = {
                "image": x[0].float().cpu(),
                "stickered_image": x_sticker[0].float().cpu(),
                "maps": {name: r.maps[0].float().cpu() for name, r in results.items()},
                "maps_clean": {name: results[name].maps[0].float().cpu() for name in ("original", "T4")},
                "maps_sticker": {name: r.maps[0].float().cpu() for name, r in sticker_results.items()},
            }
    rows = []
    for data_kind, accumulators in (("clean", clean), ("sticker", stickered)):
        for name, accumulator in accumulators.items():
            summary = accumulator.summary(pixels)
            row = {"network": name, "data": data_kind, "accuracy": summary["accuracy"],
                   "score_change": summary["score_change"], "l1": summary["l1"], "n": summary["n"],
                   "score_change_max": summary["score_change_max"], "l1_per_pixel": summary["l1_per_pixel"],
                   "l1_median": summary["l1_median"], "alpha_extra_nonpositive": summary["alpha_extra_nonpositive"]}
            if profile == "embedded":
                row["pointing"] = summary["pointing"]
            rows.append(row)
    settings = {"profile": profile, "limit": limit, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
                "batch_size": batch_size, "autocast": None if autocast_dtype is None else str(autocast_dtype),
                "tf32": tf32}
    reproduction = Reproduction(profile, description, rows, examples, time.time() - started, settings)
    if out is not None:
        reproduction.write(out)
    return reproduction
