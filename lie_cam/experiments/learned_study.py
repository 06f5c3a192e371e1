"""Learned attacks beside the closed-form ones, and against the audit:
`python -m lie_cam learn-study --models DIR --out DIR2 [--zoo ZOO]`.

For every kind of `lie_cam.attacks.learned.KINDS` whose model `python -m lie_cam learn` wrote into DIR
(KIND.safetensors, checked against the sha256 of its recipe KIND.json):

- the sweep (`--sweep L1 L2 ...`, none by default: each point is a training of minutes): the same recipe
  trained again with each weight lambda given (the recipe's own lambda is the shipped model, not trained
  again), measured on the same test scenes: accuracy against fooling success;
- the audit (`lie_cam.audit.auditing.audit`, every self-relative check, the embedded scenes it uses by
  default) of the shipped model and of every sweep model: verdict and each check's score;
- the detection study: each check's scores on the 22 clean networks of the trigger study
  (`trigger_study.clean_models`: the zoo, the embedded ResNet, untrained compact networks) against the
  learned models of each kind: AUROC per check and kind, and how many of them the audit flags;
- the closed-form attacks of the registry (T1-T4, the hijack, the adapted ones) on the embedded model,
  measured the same way against their own targets (`ManipulatedModel.target_explanation`; the hijack: flat),
  and audited.

Writes DIR2/learned_study.json and learned_study.md through `staged_output`. Deterministic: every model,
image and search from fixed seeds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lie_cam import data as synth
from lie_cam.anatomy import input_spec
from lie_cam.attacks import ATTACKS, ManipulatedModel
from lie_cam.attacks.learned import FOOLED_L1, KINDS, cell_l1
from lie_cam.attacks.learning import learn, measure, evaluation_rows, training_rows
from lie_cam.audit.auditing import audit
from lie_cam.audit.detectors import auroc
from lie_cam.experiments.learn import LEARN_TEST, base_model, check_not_shipped, load_learned
from lie_cam.experiments.output import check_output_dir, staged_output
from lie_cam.gradcam import gradcam
from lie_cam.metrics import score_change, top1_correct
from lie_cam.plotting import FONT, WIDTH, markdown_table

__all__ = ["STUDY_FILES", "SWEEP", "audit_row", "closed_form_row", "run_learned_study", "study_markdown",
           "example_panels", "tradeoff_figure"]

STUDY_FILES = ("learned_study.json", "learned_study.md")
SWEEP: tuple[float, ...] = ()  # lambdas trained besides each recipe's own (the shipped study: --sweep 0.3 10)


def audit_row(model: nn.Module) -> dict:
    """The audit's verdict and each check's score and flag for `model` (its default images, no maps)."""
    result = audit(model, maps=False)
    return {"flagged": result.flagged, "verdict": result.verdict,
            "scores": {c.key: c.score for c in result.checks}, "thresholds": {c.key: c.threshold for c in result.checks}}


def closed_form_row(name: str, model: nn.Module, n: int) -> dict:
    """A registry attack on `model`, measured as the learned ones are: accuracy and its change on the first n
    test scenes, the fooling success (L1 (2) to the attack's own target <= FOOLED_L1; triggered attacks: on
    the scenes with their stickers at the tables' places), the mean L1 and the mean score change."""
    x, labels, _ = synth.synthetic_split("test", n)
    given = {}
    if ATTACKS[name].accepts("images"):  # the hijack picks its channel on the attacker's own images
        x_attack, y_attack, _ = synth.synthetic_split("val", 64)
        given = {"images": x_attack, "labels": y_attack}
    net = ATTACKS[name].build(model, **given).eval()
    shown = x
    if ATTACKS[name].triggered:
        shown, _ = synth.paste_stickers(x, [synth.STICKER_SEED + i for i in range(n)], spec=input_spec(model))
    with torch.no_grad():
        y_o, y_n = model(x), net(x)
    result = gradcam(net, shown)
    side = result.maps.shape[-1]
    if isinstance(net, ManipulatedModel):
        honest = gradcam(model, shown).normalized
        target = net.target_explanation(shown, honest=honest)
    else:
        target = torch.ones(n, side, side)
    distance = cell_l1(result.maps, target)
    acc, acc_o = top1_correct(y_n, labels).double().mean().item(), top1_correct(y_o, labels).double().mean().item()
    return {"attack": name, "family": ATTACKS[name].family, "n": n, "accuracy": acc, "accuracy_original": acc_o,
            "accuracy_change_points": round(100 * (acc - acc_o), 2),
            "fooling_success": (distance <= FOOLED_L1).double().mean().item(), "l1": distance.double().mean().item(),
            "score_change": score_change(y_o, y_n).mean().item(), "audit": audit_row(net)}


def _sweep(kind: str, recipe: dict, model: nn.Module, rows_test, lams: tuple[float, ...],
           log: Callable[[str], None]) -> list[dict]:
    lams = tuple(lam for lam in lams if lam != recipe["lam"])  # the recipe's own lambda is the shipped model
    if not lams:
        return []
    rows = training_rows(kind, model, recipe["train_size"], recipe["seed"])
    points = []
    for lam in lams:
        started = time.time()
        net, _ = learn(model, kind, lam=lam, steps=recipe["steps"], batch=recipe["batch"], lr=recipe["lr"],
                       keep=recipe["keep"], seed=recipe["seed"], stages=recipe.get("stages", 1), rows=rows)
        point = {"lam": lam, **measure(net, model, kind, rows_test), "audit": audit_row(net),
                 "seconds": round(time.time() - started)}
        log(f"{kind} lambda {lam}: fooling {point['fooling_success']:.3f}, accuracy {point['accuracy']:.3f}, "
            f"audit {point['audit']['verdict']} ({point['seconds']}s)")
        points.append(point)
    return points


def _aurocs(clean: dict[str, dict], attacked: list[dict]) -> dict[str, float]:
    keys = [k for k in next(iter(clean.values()))["scores"] if k != "architecture"]
    out = {}
    for key in keys:
        c = [r["scores"][key] for r in clean.values() if r["scores"][key] is not None]
        a = [r["scores"][key] for r in attacked if r["scores"][key] is not None]
        out[key] = auroc(c, a) if c and a else None
    return out


def run_learned_study(models: str | Path, out: str | Path, zoo: str | Path | None = None,
                      test_size: int = LEARN_TEST["n"], pairs: int = LEARN_TEST["pairs"], force: bool = False,
                      sweep: tuple[float, ...] = SWEEP, progress: bool = True, command: str | None = None) -> dict:
    """The study of the module docstring; writes DIR2/learned_study.json and .md, returns the json's content
    (`command`: what to record as the command that made it; default: the call's arguments as options)."""
    from lie_cam.experiments.trigger_study import clean_models
    from lie_cam.experiments.zoo import build_zoo, zoo_files

    check_not_shipped(out, force)
    out = check_output_dir(out, STUDY_FILES)
    zoo = check_output_dir(zoo if zoo is not None else out / "zoo", zoo_files())
    log = (lambda *a: print(*a, flush=True)) if progress else (lambda *a: None)
    started = time.time()
    found = [kind for kind in KINDS if (Path(models) / f"{kind}.json").is_file()]
    if not found:
        raise FileNotFoundError(f"{models} holds no learned model (KIND.safetensors and KIND.json from "
                                "`python -m lie_cam learn`)")
    kinds: dict[str, dict] = {}
    for kind in found:
        net, recipe = load_learned(kind, models)
        model = base_model(recipe["arch"])[0]
        rows_test = evaluation_rows(kind, model, test_size, pairs)
        shipped = {"lam": recipe["lam"], **measure(net, model, kind, rows_test), "audit": audit_row(net)}
        honest = measure(model, model, kind, rows_test)  # what the original network "fools" by itself
        log(f"{kind} (shipped, lambda {recipe['lam']}): fooling {shipped['fooling_success']:.3f}, "
            f"accuracy {shipped['accuracy']:.3f}, audit {shipped['audit']['verdict']}")
        points = sorted([shipped, *_sweep(kind, recipe, model, rows_test, tuple(sweep), log)],
                        key=lambda p: p["lam"])
        kinds[kind] = {"recipe_sha256": recipe["sha256"], "lam": recipe["lam"], "shipped": shipped, "sweep": points,
                       "original": honest}
    build_zoo(zoo, threads=torch.get_num_threads())
    clean = {name: audit_row(m) for name, m in clean_models(zoo).items()}
    log(f"clean networks audited: {sum(bool(r['flagged']) for r in clean.values())} of {len(clean)} flagged")
    for kind, entry in kinds.items():
        entry["auroc"] = _aurocs(clean, [p["audit"] for p in entry["sweep"]])
        entry["flagged"] = sum(bool(p["audit"]["flagged"]) for p in entry["sweep"])
    embedded = base_model("vgg")[0]
    closed = {name: closed_form_row(name, embedded, test_size) for name in ATTACKS}
    result = {"kinds": kinds, "closed_form": closed, "clean": clean, "sweep": list(sweep), "test_size": test_size,
              "pairs": pairs, "fooled_l1": FOOLED_L1, "threads": torch.get_num_threads(),
              "seconds": round(time.time() - started),
              "command": command or (f"python -m lie_cam learn-study --models {models} --zoo {zoo} --test-size "
                                     f"{test_size}" + (" --sweep " + " ".join(f"{lam:g}" for lam in sweep) if sweep else "")
                                     + f" --out {out}")}
    with staged_output(out, STUDY_FILES) as stage:
        (stage / "learned_study.json").write_text(json.dumps(result, indent=1) + "\n")
        (stage / "learned_study.md").write_text(study_markdown(result))
    return result


def study_markdown(result: dict) -> str:
    """The study's tables: learned kinds (shipped lambda) with the audit, and the closed-form attacks."""
    rows = []
    for kind, entry in result["kinds"].items():
        s = entry["shipped"]
        aurocs = [v for v in entry["auroc"].values() if v is not None]
        rows.append({"kind": kind, "lambda": f"{entry['lam']:g}", "accuracy": f"{s['accuracy']:.3f}",
                     "change (points)": f"{s['accuracy_change_points']:+.1f}",
                     "fooling success": f"{s['fooling_success']:.3f}", "score change": f"{s['score_change']:.2f}",
                     "audit": s["audit"]["verdict"], "best AUROC": f"{max(aurocs):.2f}" if aurocs else "-"})
    text = "## Learned attacks (shipped models)\n\n" + markdown_table(rows)
    closed = [{"attack": name, "accuracy": f"{r['accuracy']:.3f}", "change (points)": f"{r['accuracy_change_points']:+.1f}",
               "fooling success": f"{r['fooling_success']:.3f}", "score change": f"{r['score_change']:.2g}",
               "audit": r["audit"]["verdict"]} for name, r in result["closed_form"].items()]
    sweep = [{"kind": kind, "lambda": f"{p['lam']:g}" + (" (shipped)" if p["lam"] == entry["lam"] else ""),
              "accuracy": f"{p['accuracy']:.3f}", "change (points)": f"{p['accuracy_change_points']:+.1f}",
              "fooling success": f"{p['fooling_success']:.3f}", "audit": p["audit"]["verdict"]}
             for kind, entry in result["kinds"].items() for p in entry["sweep"]]
    if len(sweep) > len(rows):
        text += "\n\n## The sweep over lambda (the same recipe, each lambda trained)\n\n" + markdown_table(sweep)
    return text + "\n\n## Closed-form attacks on the same scenes\n\n" + markdown_table(closed) + "\n"


def example_panels(models: dict[str, nn.Module], model: nn.Module, index: int = 0) -> list[tuple]:
    """For `lie_cam.plotting.map_grid(..., ncols=4)`: per kind, test scene `index` as the kind shows it
    (swap: a two-object scene, explained for the circle; backdoor: with its sticker), the original model's
    map, the learned model's map, and the target (center-mass: the original's map, which the lie leaves)."""
    panels = []
    for kind, net in models.items():
        rows = evaluation_rows(kind, model, index + 1, index + 1)
        n = index + 1
        row = n + index if kind in ("swap", "backdoor") else index
        x, cls = rows.x[row:row + 1], rows.classes[row:row + 1]
        target = rows.targets[row]
        panels += [(x[0], None, kind), (x[0], gradcam(model, x, cls).maps[0], "original"),
                   (x[0], gradcam(net, x, cls).maps[0], "learned"),
                   (None, target, "original's, to leave" if kind == "center-mass" else "target")]
    return panels


def tradeoff_figure(result: dict):
    """Accuracy change (points) against fooling success: each kind's sweep over lambda (a line, lambda
    written at each point), the closed-form attacks (black), the issue's bar (dashed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH, 4.6), layout="constrained")
    ax = fig.add_subplot()
    for kind, entry in result["kinds"].items():
        points = entry["sweep"]
        xs, ys = [p["fooling_success"] for p in points], [p["accuracy_change_points"] for p in points]
        ax.plot(xs, ys, marker="o", label=kind)
        for p, x, y in zip(points, xs, ys):
            ax.annotate(f"{p['lam']:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=FONT)
    for name, r in result["closed_form"].items():
        ax.plot([r["fooling_success"]], [r["accuracy_change_points"]], marker="s", color="black", linestyle="none")
    ax.axhline(-1, color="grey", linestyle="--")
    ax.axvline(0.9, color="grey", linestyle="--")
    ax.set_xlabel("fooling success rate", fontsize=FONT)
    ax.set_ylabel("accuracy change (points)", fontsize=FONT)
    ax.tick_params(labelsize=FONT)
    ax.legend(fontsize=FONT, loc="lower left", ncols=2)
    return fig
