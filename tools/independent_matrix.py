"""An independent re-measurement of the "which explainers lie" verdict matrix.

    python tools/independent_matrix.py --matrix data/explainers --limit 32 --costly-limit 4 --out DIR

writes DIR/independent.json (rows with the matrix's keys), DIR/independent_run.json (settings,
timings, faithfulness checks) and DIR/agreement.md (this script's verdicts against
the --matrix folder's matrix.json, cell by cell), and prints the agreement.

Only the attacked networks and the data come from lie_cam (`lie_cam.book.setup`,
`lie_cam.surgery.paper_networks`, `anchored_flat`/`zero_sum_backdoor`, `paste_stickers`,
`target_explanation`, `target_layer`). Every explanation map is obtained here by calling
pytorch-grad-cam, captum and torchcam the way their users do; the honest Grad-CAM that T4's
target needs, the normalisations, the distances, the pointing game and the verdicts are
computed by this file alone.

The measurement, per method M, attack network n and hooked layer L in {explained, last_relu}:

    E_n = M's 14x14 map of n hooked at L,   E_o = M's map of the original network at its explained layer,
    m~  = m / max(m)  (all zero if max(m) <= 0; NaN -> 0),
    l1_to_target = mean_images sum_ij |T~ - E~_n|,   l1_to_honest = mean_images sum_ij |E~_o - E~_n|,
    fooled   if l1_to_target <= tau N_A  and  l1_to_target <= l1_to_honest + 1e-6 N_A,
    immune   elif l1_to_honest <= tau N_A,
    partial  otherwise,                         tau = 0.1, N_A = 14 * 14 = 196.

T = `net.target_explanation(...)`, the attack's intended map. T4 (and T4-adapted) aim for the honest
explanation wherever their sticker detector is silent; by default that honest map is E~_o, the same
method's map of the original network (`--t4-honest method`), or with `--t4-honest gradcam` the
original's Grad-CAM for every method.

pointing: the pointing game's hit rate of E_n (peak of the bilinearly upsampled map on the mask):
the object mask on clean images, the pasted stickers on stickered ones. It takes no part in the verdict.

Normalisations: `default` = the map as the library hands it to its user (pytorch-grad-cam and
torchcam min-max normalise, captum returns the raw weighted sum); `max` = the method's raw map
after its ReLU (captum: ReLU of its raw map) - the ~ above then divides it by its max.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import lie_cam  # noqa: F401  (first: lie_cam.compat makes torchvision importable on this CPU-only torch)
from lie_cam.compat import import_torchvision

import_torchvision()

TAU = 0.1
TIE = 1e-6  # per pixel: l1_to_target may exceed l1_to_honest by this much and still count as "not larger"
ATTACKS: dict[str, tuple[str, str]] = {  # attack name -> (network, images it is shown)
    "T1": ("T1", "clean"),
    "T2": ("T2", "clean"),
    "T3": ("T3", "clean"),
    "T4-clean": ("T4", "clean"),
    "T4-sticker": ("T4", "sticker"),
    "T1-adapted": ("T1-adapted", "clean"),
    "T4-adapted-sticker": ("T4-adapted", "sticker"),
}
LAYERS = ("explained", "last_relu")
NORMALIZATIONS = ("default", "max")
KEY_FIELDS = ("library", "method", "attack", "normalization", "layer")


# ---------------------------------------------------------------------------
# The measurement: normalisation, distances, verdict, pointing
# ---------------------------------------------------------------------------


def max_normalise(maps: np.ndarray) -> np.ndarray:
    """m~ = m / max(m) per map (B x H x W, float64); an all-<=0 map becomes zero, NaN becomes 0."""
    m = np.nan_to_num(np.asarray(maps, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    peak = m.reshape(m.shape[0], -1).max(axis=1)
    scale = np.where(peak > 0, peak, 1.0)[:, None, None]
    out = np.where(peak[:, None, None] > 0, m / scale, 0.0)
    return np.nan_to_num(out, nan=0.0)


def l1_per_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sum_ij |a~ - b~| per image, both max-normalised first."""
    return np.abs(max_normalise(a) - max_normalise(b)).reshape(a.shape[0], -1).sum(axis=1)


def verdict(l1_to_target: float, l1_to_honest: float, pixels: int, tau: float = TAU) -> str:
    """fooled / immune / partial from the two mean distances (see the module docstring)."""
    if not (math.isfinite(l1_to_target) and math.isfinite(l1_to_honest)):
        return "error"
    if l1_to_target <= tau * pixels and l1_to_target <= l1_to_honest + TIE * pixels:
        return "fooled"
    if l1_to_honest <= tau * pixels:
        return "immune"
    return "partial"


def pointing_rate(maps: np.ndarray, masks: torch.Tensor | None) -> float | None:
    """Pointing game: fraction of images whose bilinearly upsampled map (align_corners=False) peaks
    on the mask (B x 224 x 224 bool); an all-<=0 map is a miss. None without masks."""
    if masks is None:
        return None
    m = torch.from_numpy(np.nan_to_num(np.asarray(maps, dtype=np.float32)))[:, None]
    up = F.interpolate(m, size=tuple(masks.shape[-2:]), mode="bilinear", align_corners=False)[:, 0].flatten(1)
    peak = up.argmax(dim=1)
    hit = masks.flatten(1).cpu().gather(1, peak[:, None])[:, 0].bool() & (up.amax(dim=1) > 0)
    return float(hit.double().mean())


# ---------------------------------------------------------------------------
# Maps from the libraries, as their users call them
# ---------------------------------------------------------------------------


@dataclass
class Maps:
    """A method's maps at A's resolution (B x 14 x 14): `default` (what the library shows its user,
    before any upsampling to the input size) and `max` (raw, after the method's ReLU).
    `check`: max |our 14x14 map, upsampled the library's way - the library's own output|, where
    the library returns an upsampled map (pytorch-grad-cam), else None."""

    default: np.ndarray
    max: np.ndarray
    check: float | None = None


MapFn = Callable[[nn.Module, nn.Module, torch.Tensor, torch.Tensor], Maps]


@dataclass(frozen=True)
class Method:
    library: str
    method: str
    costly: bool
    maps: MapFn


def _pgc_shown(relu_cam: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """pytorch-grad-cam's path from np.maximum(cam, 0) to what `cam(...)` returns, for one target
    layer: BaseCAM.compute_cam_per_layer (scale_cam_image: min-max, then cv2.resize to `size`)
    and BaseCAM.aggregate_multi_layers (max(., 0), mean over layers, scale_cam_image again).
    size=None skips the resize: the same map at A's resolution."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    per_layer = scale_cam_image(relu_cam, size)[:, None]
    return scale_cam_image(np.maximum(per_layer, 0).mean(axis=1))


def pytorch_grad_cam_maps(cls: type) -> MapFn:
    """pytorch-grad-cam's `cls` as documented (`with cls(model, target_layers=[layer]) as cam:
    cam(input_tensor=x, targets=[ClassifierOutputTarget(c), ...])`). The raw map is recomputed from
    what that call recorded, with the library's public pieces: `cam.activations_and_grads`
    (activations, gradients) and `cam.get_cam_image` (which calls `get_cam_weights`):
    max = np.maximum(get_cam_image(...), 0), the map before `scale_cam_image`. default = the same
    normalisation chain the library applies, without the resize to 224 x 224. That this 14x14 map is
    exactly what the user saw is checked: resized the library's way it must reproduce cam(...)."""

    def run(net: nn.Module, layer: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> Maps:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = [ClassifierOutputTarget(int(c)) for c in classes]
        cam = cls(model=net, target_layers=[layer])
        try:
            shown = cam(input_tensor=x, targets=targets)  # B x 224 x 224, min-max normalised
            # [0]: the first forward is the one on x (Score-CAM's masked forwards append later ones)
            acts = cam.activations_and_grads.activations[0].numpy()
            grads = cam.activations_and_grads.gradients[0].numpy() if cam.uses_gradients else None
            raw = cam.get_cam_image(x, layer, targets, acts, grads, False)
        finally:
            cam.activations_and_grads.release()
        relu = np.maximum(raw, 0)
        check = float(np.abs(_pgc_shown(relu, tuple(x.shape[-2:][::-1])) - shown).max())
        return Maps(default=_pgc_shown(relu, None), max=relu, check=check)

    return run


def captum_layer_gradcam(net: nn.Module, layer: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> Maps:
    """captum's LayerGradCam(net, layer).attribute(x, target=classes) with its defaults
    (relu_attributions=False): the raw sum_k mean(dy_c/dA_k) A_k, B x 1 x 14 x 14, is what its user
    gets (default); max = its ReLU."""
    from captum.attr import LayerGradCam

    raw = LayerGradCam(net, layer).attribute(x, target=[int(c) for c in classes])
    raw = raw.detach()[:, 0].double().numpy()
    return Maps(default=raw, max=np.maximum(raw, 0))


def torchcam_maps(cls: type) -> MapFn:
    """torchcam's `cls` as documented (`with cls(net, target_layer=layer) as ex: scores = net(x);
    ex(class_idx=[...], scores=scores)`), once with normalized=True (default: torchcam's min-max)
    and once with normalized=False (max: the map after the method's ReLU). A fresh forward before
    each call, as the gradient extractors free the graph when they backpropagate."""

    def run(net: nn.Module, layer: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> Maps:
        idx = [int(c) for c in classes]
        with cls(net, target_layer=layer) as extractor:
            out = {}
            for normalized in (True, False):
                scores = net(x)
                out[normalized] = extractor(class_idx=idx, scores=scores, normalized=normalized)[0]
        return Maps(default=out[True].detach().double().numpy(), max=out[False].detach().double().numpy())

    return run


def methods() -> list[Method]:
    """The methods measured: pytorch-grad-cam (its CAM family whose maps come from get_cam_image),
    captum's LayerGradCam, torchcam's deterministic CAMs. Score-CAM is `costly`."""
    import pytorch_grad_cam as pgc
    import torchcam.methods as tcm

    out = [Method("pytorch-grad-cam", name, name == "ScoreCAM", pytorch_grad_cam_maps(getattr(pgc, name)))
           for name in ("GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM", "GradCAMElementWise",
                        "EigenGradCAM", "EigenCAM", "KPCA_CAM", "FEM", "ScoreCAM")]
    out.append(Method("captum", "LayerGradCam", False, captum_layer_gradcam))
    out += [Method("torchcam", name, name == "ScoreCAM", torchcam_maps(getattr(tcm, name)))
            for name in ("GradCAM", "GradCAMpp", "XGradCAM", "LayerCAM", "ScoreCAM")]
    return out


# ---------------------------------------------------------------------------
# Targets: T4 needs the original network's (max-normalised) Grad-CAM
# ---------------------------------------------------------------------------


def honest_gradcam(model: nn.Module, layer: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_k alpha_k A_k) / max, alpha_k = mean_ij dy_c/dA_k(i, j), of `model` at `layer`
    (B x H x W), by plain autograd: the honest map T4 (and T4-adapted) aim for where no sticker is."""
    store: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    try:
        with torch.enable_grad():
            y = model(x)
            a = store["a"]
            (g,) = torch.autograd.grad(y.gather(1, classes[:, None]).sum(), a)
    finally:
        handle.remove()
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1)).detach()
    return torch.from_numpy(max_normalise(cam.double().numpy())).to(x.dtype)


# ---------------------------------------------------------------------------
# The matrix
# ---------------------------------------------------------------------------


@dataclass
class Material:
    """What every cell needs: the original model, the attacked networks, the two image sets
    (clean, sticker), their explained classes (the original's argmax), the pointing game's masks per
    image set (clean: the object; stickered: the stickers, where T4 wants the map), per attack the added
    channel A^{K+1} (B x 14 x 14, from which the attack's intended map is made) and the original's
    max-normalised Grad-CAM per image set."""

    model: nn.Module
    nets: dict[str, nn.Module]
    images: dict[str, torch.Tensor]
    classes: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor] | None
    extra: dict[str, torch.Tensor]
    gradcam: dict[str, torch.Tensor]

    def target(self, attack: str, honest: np.ndarray | None, sel: slice) -> np.ndarray:
        """The attack's intended map T (max-normalised) on the images `sel`, via the network's own
        `target_explanation`. T4's target is the honest map wherever its detector is silent: with
        honest=None the original's Grad-CAM, else the given (method's own) honest map."""
        net_name, which = ATTACKS[attack]
        h = self.gradcam[which][sel] if honest is None else torch.from_numpy(max_normalise(honest))
        t = self.nets[net_name].target_explanation(extra=self.extra[attack][sel], honest=h.to(self.extra[attack].dtype))
        return t.detach().double().numpy()


def build_material(model: nn.Module, x: torch.Tensor, masks: torch.Tensor | None,
                   attacks: Sequence[str] = tuple(ATTACKS), t3_downsample: int | None = None) -> Material:
    """The networks (`paper_networks`, T1-/T4-adapted; with t3_downsample, T3 rebuilt with the
    paper's constants and that `semi_random(downsample=)`: 0 is the paper's full-resolution F),
    the clean and stickered images and what the cells share."""
    from lie_cam.data import paste_stickers, smiley
    from lie_cam.attacks import anchored_flat, zero_sum_backdoor
    from lie_cam.attacks import paper_networks, semi_random

    nets: dict[str, nn.Module] = dict(paper_networks(model))
    if t3_downsample is not None:
        nets["T3"] = semi_random(model, eps=0.01, c_G=1e4, c_F=1e7, seed=0, downsample=t3_downsample)
    nets["T1-adapted"] = anchored_flat(model)
    nets["T4-adapted"] = zero_sum_backdoor(model)
    for net in nets.values():
        net.eval()
    stickered, corners = paste_stickers(x, seeds=list(range(len(x))))
    images = {"clean": x, "sticker": stickered}
    point_masks = None
    if masks is not None:
        side = smiley().shape[-1]  # the pasted sticker's side in input pixels
        on_sticker = torch.zeros_like(masks, dtype=torch.bool)
        for i, image_corners in enumerate(corners):
            for r, c in image_corners:
                on_sticker[i, r : r + side, c : c + side] = True
        point_masks = {"clean": masks.bool(), "sticker": on_sticker}
    with torch.no_grad():
        classes = {k: model(v).argmax(dim=1) for k, v in images.items()}
        extra = {a: nets[ATTACKS[a][0]].extra_channel(images[ATTACKS[a][1]]) for a in attacks}
    gradcam = {k: honest_gradcam(model, lie_cam.target_layer(model), v, classes[k]) for k, v in images.items()}
    return Material(model, nets, images, classes, point_masks, extra, gradcam)


def hooked_layer(net: nn.Module, layer: str) -> nn.Module:
    """`explained`: the module whose output is A (with the added channel); `last_relu`: the ReLU
    block before the injection (for the original model: its explained layer)."""
    if layer == "explained":
        return lie_cam.target_layer(net)
    if layer == "last_relu":
        return net.last_relu if hasattr(net, "last_relu") else lie_cam.target_layer(net)
    raise ValueError(f"unknown layer {layer!r}")


def measure(material: Material, method_list: Iterable[Method], attacks: Sequence[str] = tuple(ATTACKS),
            layers: Sequence[str] = LAYERS, costly_limit: int | None = 2, t4_honest: str = "method",
            log: Callable[[str], None] = lambda s: None) -> tuple[list[dict], dict]:
    """Rows (one per method x attack x layer x normalisation) and per-method diagnostics.

    t4_honest: what T4's intended map is where its detector is silent (every clean image):
    "method" = the same method's map of the original, E~_o, in the same normalisation (the network
    is the original there, so that is what the attack leaves every explainer showing);
    "gradcam" = the original's Grad-CAM for every method."""
    if t4_honest not in ("method", "gradcam"):
        raise ValueError(f"t4_honest must be 'method' or 'gradcam', got {t4_honest!r}")
    rows: list[dict] = []
    diagnostics: dict[str, dict] = {}
    for m in method_list:
        start = time.perf_counter()
        k = costly_limit if (m.costly and costly_limit is not None) else None
        sel = slice(0, k)
        checks: list[float] = []
        honest_maps: dict[str, Maps] = {}
        for which in sorted({ATTACKS[a][1] for a in attacks}):
            x = material.images[which][sel]
            honest_maps[which] = m.maps(material.model, lie_cam.target_layer(material.model), x,
                                        material.classes[which][sel])
            checks += [honest_maps[which].check] if honest_maps[which].check is not None else []
        for attack in attacks:
            net_name, which = ATTACKS[attack]
            x, classes = material.images[which][sel], material.classes[which][sel]
            masks = None if material.masks is None else material.masks[which][sel]
            for layer in layers:
                try:
                    e_n = m.maps(material.nets[net_name], hooked_layer(material.nets[net_name], layer), x, classes)
                except Exception as exc:  # a method that raises is an "error" cell, as in the matrix
                    log(f"  {m.library}/{m.method}/{attack}/{layer}: {type(exc).__name__}: {exc}")
                    for norm in NORMALIZATIONS:
                        rows.append(dict(library=m.library, method=m.method, attack=attack, normalization=norm,
                                         layer=layer, l1_to_target=None, l1_to_honest=None,
                                         pointing=None, verdict="error", n=int(x.shape[0])))
                    continue
                checks += [e_n.check] if e_n.check is not None else []
                for norm in NORMALIZATIONS:
                    e = getattr(e_n, norm)
                    e_o = getattr(honest_maps[which], norm)
                    target = material.target(attack, e_o if t4_honest == "method" else None, sel)
                    to_target = float(l1_per_image(target, e).mean())
                    to_honest = float(l1_per_image(e_o, e).mean())
                    pixels = int(np.prod(e.shape[1:]))
                    rows.append(dict(library=m.library, method=m.method, attack=attack, normalization=norm,
                                     layer=layer, l1_to_target=to_target, l1_to_honest=to_honest,
                                     pointing=pointing_rate(e, masks), verdict=verdict(to_target, to_honest, pixels),
                                     n=int(x.shape[0])))
        seconds = time.perf_counter() - start
        diagnostics[f"{m.library}/{m.method}"] = {
            "seconds": seconds, "images": int(material.images["clean"][sel].shape[0]),
            "max_abs_diff_vs_library_output": max(checks) if checks else None}
        log(f"{m.library}/{m.method}: {seconds:.1f} s"
            + (f", 14x14 map vs library output max |diff| {max(checks):.2e}" if checks else ""))
    return rows, diagnostics


# ---------------------------------------------------------------------------
# Agreement with the project's matrix
# ---------------------------------------------------------------------------


def flip_margin(l1_to_target: float, l1_to_honest: float, pixels: int, tau: float = TAU) -> float:
    """The smallest change of one of the two mean distances that changes `verdict`'s answer."""
    limit, tie = tau * pixels, TIE * pixels
    if l1_to_target <= limit and l1_to_target <= l1_to_honest + tie:  # fooled
        return min(limit - l1_to_target, l1_to_honest + tie - l1_to_target)
    to_fooled = max(l1_to_target - limit, 0.0) + max(l1_to_target - l1_to_honest - tie, 0.0)
    return min(to_fooled, abs(limit - l1_to_honest))  # immune <-> partial at l1_to_honest = tau N_A


def key(row: dict) -> tuple:
    return tuple(row[f] for f in KEY_FIELDS)


def agreement(ours: list[dict], theirs: list[dict]) -> tuple[int, int, list[tuple[dict, dict]]]:
    """(agreeing cells, cells in both, disagreeing (ours, theirs) pairs)."""
    their_rows = {key(r): r for r in theirs}
    both = [(r, their_rows[key(r)]) for r in ours if key(r) in their_rows]
    differ = [(a, b) for a, b in both if a["verdict"] != b["verdict"]]
    return len(both) - len(differ), len(both), differ


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _fmt(v: float | None) -> str:
    return f"{v:.3f}" if _finite(v) else "-"


def agreement_markdown(ours: list[dict], theirs: list[dict], settings: dict) -> str:
    agree, total, differ = agreement(ours, theirs)
    pct = 100.0 * agree / total if total else float("nan")
    lines = [
        "# Independent cross-check of the explainer verdict matrix",
        "",
        f"Settings: {json.dumps(settings)}",
        "",
        f"**Agreement: {agree} / {total} cells ({pct:.1f} %)**; {len(differ)} disagreements.",
        "",
        "Threshold tau N_A = " + _fmt(TAU * 196) + " (N_A = 196).",
        "",
        "## Per library / normalisation / layer",
        "",
        "| library | normalization | layer | agree | cells |",
        "|---|---|---|---|---|",
    ]
    their_rows = {key(r): r for r in theirs}
    groups: dict[tuple, list[bool]] = {}
    for r in ours:
        if key(r) in their_rows:
            groups.setdefault((r["library"], r["normalization"], r["layer"]), []).append(
                r["verdict"] == their_rows[key(r)]["verdict"])
    for g, hits in sorted(groups.items()):
        lines.append(f"| {g[0]} | {g[1]} | {g[2]} | {sum(hits)} | {len(hits)} |")
    # Distances, where both measured the same number of images: how close the two measurements are
    same_n = [(r, their_rows[key(r)]) for r in ours if key(r) in their_rows and r["n"] == their_rows[key(r)]["n"]]
    gaps = [(abs(a[f] - b[f]), a, f) for a, b in same_n for f in ("l1_to_target", "l1_to_honest")
            if _finite(a[f]) and _finite(b[f])]
    if gaps:
        worst = max(gaps, key=lambda g: g[0])
        lines += ["", f"Distances on {len(same_n)} cells with the same number of images: "
                  f"{sum(g[0] <= 1e-2 for g in gaps)} / {len(gaps)} within 0.01; largest gap {worst[0]:.4g} "
                  f"({'/'.join(str(worst[1][f]) for f in KEY_FIELDS)}, {worst[2]})."]
    # Closest calls: the smallest change of one mean distance that would flip our verdict
    close = sorted(((flip_margin(r["l1_to_target"], r["l1_to_honest"], 196), r) for r in ours
                    if _finite(r["l1_to_target"]) and _finite(r["l1_to_honest"])), key=lambda p: p[0])
    ties = [r for m, r in close if r["verdict"] == "fooled" and abs(r["l1_to_target"] - r["l1_to_honest"]) <= TIE * 196]
    lines += ["", f"{len(ties)} fooled cells are ties (l1_to_target = l1_to_honest within 1e-6 N_A: the intended map "
              f"is the honest one), in attacks {sorted({r['attack'] for r in ties})}.",
              "", "Closest calls other than ties (a change of one mean distance by less than 2 flips the verdict):", ""]
    near = [(m, r) for m, r in close if m < 2 and r not in ties]
    lines += [f"- {'/'.join(r[f] for f in KEY_FIELDS)}: {r['verdict']}, l1_T {r['l1_to_target']:.3f}, "
              f"l1_H {r['l1_to_honest']:.3f}, margin {m:.3f}" for m, r in near] or ["- none"]
    lines += ["", "## Disagreements", ""]
    if not differ:
        lines.append("None.")
    else:
        lines += ["| library | method | attack | norm | layer | ours | matrix | ours l1_T / l1_H | matrix l1_T / l1_H | n |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for a, b in differ:
            lines.append(f"| {a['library']} | {a['method']} | {a['attack']} | {a['normalization']} | {a['layer']} | "
                         f"{a['verdict']} | {b['verdict']} | {_fmt(a['l1_to_target'])} / {_fmt(a['l1_to_honest'])} | "
                         f"{_fmt(b['l1_to_target'])} / {_fmt(b['l1_to_honest'])} | {a['n']} / {b['n']} |")
    only_ours = sorted({(r["library"], r["method"]) for r in ours if key(r) not in their_rows})
    if only_ours:
        lines += ["", f"Cells only measured here: {only_ours}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", default="data/explainers", help="folder with the project's matrix.json")
    parser.add_argument("--limit", type=int, default=32, help="test images (the first ones of setup(n=limit))")
    parser.add_argument("--costly-limit", type=int, default=4, help="images for Score-CAM")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--methods", nargs="*", default=None, help="library/method names to keep (default: all)")
    parser.add_argument("--attacks", nargs="*", default=list(ATTACKS))
    parser.add_argument("--reuse", action="store_true",
                        help="compare DIR/independent.json from an earlier run instead of measuring again")
    parser.add_argument("--t3-downsample", type=int, default=None,
                        help="rebuild T3 with semi_random(downsample=D) (0: the paper's full-resolution F)")
    parser.add_argument("--t4-honest", choices=("method", "gradcam"), default="method",
                        help="T4's target where its detector is silent: the method's own honest map or Grad-CAM's")
    args = parser.parse_args(argv)

    out = Path(args.out)
    if args.reuse:
        rows = json.loads((out / "independent.json").read_text())
        settings = json.loads((out / "independent_run.json").read_text())["settings"]
    else:
        # one thread unless OMP_NUM_THREADS says otherwise: the machine is shared with timing runs
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        from lie_cam.book import setup

        start = time.perf_counter()
        ch = setup(n=args.limit, device="cpu")
        material = build_material(ch.model, ch.x, ch.masks, args.attacks, args.t3_downsample)
        chosen = [m for m in methods() if args.methods is None or f"{m.library}/{m.method}" in args.methods]
        rows, diagnostics = measure(material, chosen, args.attacks, LAYERS, args.costly_limit, args.t4_honest,
                                    log=lambda s: print(s, file=sys.stderr, flush=True))
        seconds = time.perf_counter() - start
        out.mkdir(parents=True, exist_ok=True)
        (out / "independent.json").write_text(json.dumps(rows, indent=1, allow_nan=False))
        settings = {"images": args.limit, "costly_limit": args.costly_limit, "tau": TAU,
                    "seconds": round(seconds, 1), "threads": torch.get_num_threads(), "t4_honest": args.t4_honest,
                    "t3_downsample": args.t3_downsample}
        (out / "independent_run.json").write_text(json.dumps({"settings": settings, "methods": diagnostics},
                                                             indent=1))
    theirs = json.loads((Path(args.matrix) / "matrix.json").read_text())
    report = agreement_markdown(rows, theirs, settings)
    (out / "agreement.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
