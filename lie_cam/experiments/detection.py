"""The detection study: `python -m lie_cam detect --out DIR`.

Every detector of `lie_cam.audit.detectors`, and every self-relative check of the audit
(`lie_cam.audit.auditing.run_checks`, the library behind `python -m lie_cam audit`), scores the clean
zoo (`lie_cam.experiments.zoo`) and each
attack of the registry built from every zoo model (`STUDIED`: T1-T4, the channel hijack, the hijack
travelling as a plain weights file, and the adapted attacks); AUROC and TPR at 1% FPR per (detector, attack); the hijack's
cost on the embedded model; and an adaptive round that moves the hijack's constants towards ordinary
sizes. Writes DIR/detectors.json, DIR/detectors.md and DIR/roc.png.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file
from torch import nn

from lie_cam import data as synth
from lie_cam.attacks import ATTACKS, channel_hijack, hijack_cost, least_important_channel, networks
from lie_cam.audit.auditing import run_checks
from lie_cam.audit.detectors import DETECTORS, Detector, auroc, score_all, tpr_at_fpr
from lie_cam.experiments.output import check_output_dir, staged_output
from lie_cam.experiments.zoo import build_zoo, load_zoo, zoo_files
from lie_cam.gradcam import gradcam
from lie_cam.metrics import l1_distance
from lie_cam.plotting import FONT, markdown_table

__all__ = ["STUDIED", "DETECTION_FILES", "ADAPTIVE_CONSTANTS", "run_detection", "detection_rows", "roc_figure",
           "detectors_markdown", "audit_rows"]

DETECTION_FILES = ("detectors.json", "detectors.md", "roc.png")  # what `run_detection` writes (the zoo: its own)
# The attacks of the study: every attack of the registry (paper, weights-only and adapted).
STUDIED = tuple(ATTACKS)
# The adaptive round: hijack constants (c_A, c_W) from the paper's (100, 100) towards weights and
# activations of ordinary size.
ADAPTIVE_CONSTANTS = ((100.0, 100.0), (100.0, 1.0), (1000.0, 0.1), (1e4, 0.01), (30.0, 0.3), (10.0, 1.0), (10.0, 0.1),
                      (3.0, 0.03))

Scores = dict[str, dict[str, dict[str, float]]]  # clean/attack -> model name -> detector key -> score
Verdicts = dict[str, dict[str, dict]]  # clean/attack -> model name -> {"flagged": [...], "scores": {check: score}}


def _verdict(model: nn.Module | Path, x: torch.Tensor) -> dict:
    """The audit's self-relative checks (`lie_cam.audit.auditing.run_checks`) on one model of the study."""
    from lie_cam.models import load_model_file

    results = run_checks(load_model_file(model) if isinstance(model, Path) else model, x)
    return {"flagged": [c.key for c in results if c.flagged], "scores": {c.key: c.score for c in results}}


def audit_rows(verdicts: Verdicts) -> list[dict]:
    """Per attack (and the clean zoo): how many models the audit flags, with and without the architecture check."""
    rows = []
    for kind, models in verdicts.items():
        flagged = [v["flagged"] for v in models.values()]
        rows.append({"models": kind, "n": len(flagged), "flagged": sum(bool(f) for f in flagged),
                     "flagged without architecture": sum(bool(set(f) - {"architecture"}) for f in flagged)})
    return rows


def _roc_points(clean: list[float], attacked: list[float]) -> tuple[list[float], list[float]]:
    thresholds = sorted(set(clean) | set(attacked), reverse=True)
    fpr, tpr = [0.0], [0.0]
    for t in thresholds:
        fpr.append(sum(c >= t for c in clean) / len(clean))
        tpr.append(sum(a >= t for a in attacked) / len(attacked))
    return fpr + [1.0], tpr + [1.0]


def measured(scores: Scores, detectors: tuple[Detector, ...] = DETECTORS) -> tuple[Detector, ...]:
    """The detectors every clean model of `scores` was scored on (a study run before a detector was
    added has no scores for it: its curves are left out, not invented)."""
    return tuple(d for d in detectors if all(d.key in v for v in scores["clean"].values()))


def roc_figure(scores: Scores, detectors: tuple[Detector, ...] = DETECTORS):
    """One panel per attack, one ROC curve per detector that `scores` measured (clean zoo vs attacked
    zoo), in a grid of two columns 6 in wide (a narrow page column: 400 px shows it at 2/3 size, its
    FONT-point text at >= 9 px), the legend in the panel left over (or below)."""
    from matplotlib.figure import Figure

    detectors = measured(scores, detectors)
    attacks = [a for a in STUDIED if a in scores]
    rows = (len(attacks) + 2) // 2  # one spare cell for the legend when the count is odd
    fig = Figure(figsize=(6.0, 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, 2, sharex=True, sharey=True, squeeze=False).flatten()
    clean = scores["clean"]
    for ax, attack in zip(axes, attacks):
        for d in detectors:
            fpr, tpr = _roc_points([v[d.key] for v in clean.values()], [v[d.key] for v in scores[attack].values()])
            ax.step(fpr, tpr, where="post", label=f"({d.key}) {d.name}")
        ax.plot([0, 1], [0, 1], color="0.8", lw=0.8)
        ax.set_title(attack, fontsize=FONT)
        ax.tick_params(labelsize=FONT)
    for ax in axes[len(attacks) - 2:len(attacks)]:
        ax.set_xlabel("false positive rate", fontsize=FONT)
        ax.tick_params(labelbottom=True)
    for ax in axes[:len(attacks):2]:
        ax.set_ylabel("true positive rate", fontsize=FONT)
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[len(attacks):]:
        ax.axis("off")
    if len(axes) > len(attacks):
        axes[-1].legend(handles, labels, loc="center", fontsize=FONT, frameon=False)
    else:
        fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=FONT)
    return fig


def _score_zoo(models: dict[str, nn.Module], x: torch.Tensor, x_attack: torch.Tensor, y_attack: torch.Tensor,
               log: Callable[..., None], started: float) -> tuple[Scores, Verdicts]:
    """Every detector and every check of the audit on every zoo model and on every studied attack built from it."""
    scores: Scores = {k: {} for k in ("clean", *STUDIED)}
    verdicts: Verdicts = {k: {} for k in ("clean", *STUDIED)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            scores["clean"][name] = score_all(model, x)
            verdicts["clean"][name] = _verdict(model, x)
            built: dict[str, object] = networks(model, [a for a in STUDIED if a != "hijack"], build="paper")
            hijacked = channel_hijack(model, x_attack, labels=y_attack, build="paper")
            path = Path(tmp) / f"{name}-hijack.safetensors"  # the hijack travels as a plain weights file
            save_file({k: v.contiguous() for k, v in hijacked.state_dict().items()}, str(path))
            built["hijack"] = path
            for attack in STUDIED:
                scores[attack][name] = score_all(built[attack], x)
                verdicts[attack][name] = _verdict(built[attack], x)
            log(f"{name}: done ({time.time() - started:.0f}s)")
    return scores, verdicts


def detection_rows(scores: Scores) -> list[dict]:
    """One row per (detector, studied attack): AUROC and TPR at 1% FPR, clean zoo against attacked zoo."""
    rows = []
    for d in DETECTORS:
        clean = [v[d.key] for v in scores["clean"].values()]
        for attack in [a for a in STUDIED if a in scores]:
            attacked = [v[d.key] for v in scores[attack].values()]
            rows.append({"detector": d.key, "name": d.name, "attack": attack, "auroc": auroc(clean, attacked),
                         "tpr_at_1pct_fpr": tpr_at_fpr(clean, attacked, 0.01), "n_clean": len(clean),
                         "n_attacked": len(attacked), "needs_clean_data": d.needs_clean_data, "passes": d.passes})
    return rows


def _margin(scores: Scores, key: str) -> float:
    """How far the hijacked zoo's lowest score sits above the clean zoo's highest, in clean spreads."""
    clean = torch.tensor([v[key] for v in scores["clean"].values()], dtype=torch.float64)
    attacked = torch.tensor([v[key] for v in scores["hijack"].values()], dtype=torch.float64)
    return float((attacked.min() - clean.max()) / clean.std().clamp_min(1e-12))


def _adaptive_round(embedded: nn.Module, scores: Scores, rows: list[dict], x: torch.Tensor, x_attack: torch.Tensor,
                    channel: int, x_l1: torch.Tensor, y_l1: torch.Tensor, log: Callable[..., None]) -> dict:
    """The hijack with smaller constants against every detector, thresholds at the clean zoo's maximum."""
    candidates = [r for r in rows if r["attack"] == "hijack" and r["detector"] != "a"]
    best = max(candidates, key=lambda r: (r["auroc"], _margin(scores, r["detector"])))["detector"]
    thresholds = {d.key: max(v[d.key] for v in scores["clean"].values()) for d in DETECTORS}
    with torch.no_grad():
        original_correct = (embedded(x_l1).argmax(1) == y_l1).double().mean()
    variants = []
    for c_A, c_W in ADAPTIVE_CONSTANTS:
        variant = channel_hijack(embedded, x_attack, c_A=c_A, c_W=c_W, channel=channel, build="paper")
        result = gradcam(variant, x_l1)
        variant_scores = score_all(variant, x)
        variants.append({"c_A": c_A, "c_W": c_W,
                         "l1_mean": float(l1_distance(torch.ones_like(result.maps), result.normalized).mean()),
                         "accuracy_change": float((result.logits.argmax(1) == y_l1).double().mean() - original_correct),
                         "scores": variant_scores,
                         "evades": [k for k, v in variant_scores.items() if v <= thresholds[k]],
                         "caught_by": [k for k, v in variant_scores.items() if v > thresholds[k]]})
        log(f"adaptive c_A={c_A} c_W={c_W}: {variants[-1]['l1_mean']:.3f} caught by {variants[-1]['caught_by']}")
    return {"detector": best, "thresholds": thresholds, "variants": variants}


def run_detection(out: str | Path, zoo: str | Path | None = None, n_clean: int = 4, test_size: int = 1000,
                  threads: int | None = None, progress: bool = True) -> dict:
    """Every detector on the zoo (clean) and on the studied attacks built from each zoo model; the
    hijack's cost on the embedded model; the adaptive round. Writes DIR/detectors.json,
    DIR/detectors.md and DIR/roc.png, moved into place together once all are written (the zoo, built
    first into `zoo`, default DIR/zoo, is a folder of its own); returns the json's content."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    given, out = out, check_output_dir(out, DETECTION_FILES)
    zoo = check_output_dir(zoo if zoo is not None else out / "zoo", zoo_files())
    started = time.time()
    if threads:
        torch.set_num_threads(threads)
    build_zoo(zoo, threads=torch.get_num_threads())
    models = load_zoo(zoo)
    x, _, _ = synth.synthetic_split("val", n_clean, 5000)  # the defender's few clean images
    x_attack, y_attack, _ = synth.synthetic_split("val", 64)  # the attacker's images (channel choice, means)
    log = (lambda *a: print(*a, flush=True)) if progress else (lambda *a: None)
    scores, verdicts = _score_zoo(models, x, x_attack, y_attack, log, started)
    rows = detection_rows(scores)
    embedded = models["embedded"]
    x_test, y_test, _ = synth.synthetic_split("test", test_size)
    channel = least_important_channel(embedded, x_attack, y_attack)
    cost = hijack_cost(embedded, channel_hijack(embedded, x_attack, channel=channel, build="paper"), x_test, y_test).as_dict()
    cost["channel"] = channel
    log(f"hijack cost: {cost} ({time.time() - started:.0f}s)")
    adaptive = _adaptive_round(embedded, scores, rows, x, x_attack, channel, x_test[:100], y_test[:100], log)
    result_json = {
        "rows": rows, "scores": scores, "hijack_cost": cost, "adaptive": adaptive,
        "audit": {"rows": audit_rows(verdicts), "verdicts": verdicts},
        "detectors": [{"key": d.key, "name": d.name, "needs_clean_data": d.needs_clean_data, "passes": d.passes,
                       "idea": d.idea} for d in DETECTORS],
        "zoo": list(models), "n_clean_images": n_clean, "test_size": test_size,
        "seconds": round(time.time() - started), "threads": torch.get_num_threads(),
        "command": f"python -m lie_cam detect --out {given}",
    }
    with staged_output(out, DETECTION_FILES) as stage:
        (stage / "detectors.json").write_text(json.dumps(result_json, indent=1) + "\n")
        (stage / "detectors.md").write_text(detectors_markdown(result_json))
        roc_figure(scores).savefig(stage / "roc.png", dpi=120)
    return result_json


def detectors_markdown(result: dict) -> str:
    """The AUROC table (detector x attack), the hijack's cost and the adaptive round, in Markdown."""
    names = {d["key"]: d["name"] for d in result["detectors"]}
    table = []
    for d in result["detectors"]:
        row = {"detector": f"({d['key']}) {d['name']}", "clean data": "yes" if d["needs_clean_data"] else "no",
               "passes/image": d["passes"]}
        for r in result["rows"]:
            if r["detector"] == d["key"]:
                row[r["attack"]] = f"{r['auroc']:.2f} / {r['tpr_at_1pct_fpr']:.2f}"
        table.append(row)
    adaptive = result["adaptive"]
    variants = [{"c_A": v["c_A"], "c_W": v["c_W"], "L1 to flat": v["l1_mean"], "accuracy change": v["accuracy_change"],
                 f"({adaptive['detector']}) score": v["scores"][adaptive["detector"]],
                 "caught by": ", ".join(v["caught_by"]) or "none"} for v in adaptive["variants"]]
    cost = result["hijack_cost"]
    return "\n\n".join([
        "# Detectors: AUROC / TPR at 1% FPR",
        f"{len(result['zoo'])} clean models ({', '.join(result['zoo'])}) against the same number of attacked ones "
        f"per attack; {result['n_clean_images']} clean images per data-based detector. Command: `{result['command']}` "
        f"({result['seconds']} s, {result['threads']} thread(s)).",
        markdown_table(table, ["detector", "clean data", "passes/image", *STUDIED], floatfmt=".3g"),
        "## Channel hijack on the embedded model",
        f"Channel {cost['channel']} of the last conv; on {cost['n']} test scenes: accuracy {cost['accuracy_original']:.4f} "
        f"-> {cost['accuracy_hijacked']:.4f} (change {100 * cost['accuracy_change']:+.2f} pp), score change mean "
        f"{cost['score_change_mean']:.4f} / max {cost['score_change_max']:.4f}, L1 to the flat target mean "
        f"{cost['l1_mean']:.4f} / median {cost['l1_median']:.4f}.",
        "## The audit's self-relative checks (`python -m lie_cam audit`)",
        "Models flagged by at least one check of `lie_cam.audit.calibration` (no threshold from this zoo).",
        markdown_table(result["audit"]["rows"]) if "audit" in result else "not measured in this file",
        f"## Adaptive round: evading ({adaptive['detector']}) {names[adaptive['detector']]}",
        "Thresholds: the largest clean score of each detector (0% false positives on the zoo).",
        markdown_table(variants, floatfmt=".3g"),
    ]) + "\n"
