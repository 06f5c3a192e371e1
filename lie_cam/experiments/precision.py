"""Numerics of the manipulations, from float64 to float16: predicted against measured.

T1/T2 cancel a large constant C in a bias: the paper build folds b_n = b_o - C into the first FC
layer (VGG-16: C = c_A c_W N_Z = 100 * 100 * 49 = 490,000 for T1; a GAP head: C = c_W mean(A^{K+1})).
Wherever C is rounded to a format with p explicit mantissa bits, the scores move by about the
spacing of that format at C,

    ulp_p(C) = 2^(floor(log2 C) - p)                                              (precision)

(float64 p = 52: 6e-11; float32 p = 23: 0.03; bfloat16 p = 7: 2048), and a format whose largest
finite value is below C overflows (float16: 65504): the folded bias becomes -inf (T1 on VGG-16: every
unit of the first FC layer dies and the predictions collapse). TF32 (p = 10) rounds
only the *multiplicands* of matmuls and convolutions: the bias and the accumulation stay float32, so
its prediction is float32's, not ulp_10(C) = 256. T3/T4 keep |y_n - y_o| < eps wherever c_F F(x)
and c_G c_F sum F(x) (up to 1e9 and beyond) fit the format of A.

`precision_table` measures every (setting, build, attack) with Grad-CAM inside the setting's context
(one trunk pass per setting, shared by the networks: equal to `lie_cam.gradcam` per network, tests pin
it); `python -m lie_cam precision --out DIR [--limit N]` writes DIR/precision.json.
Settings: float64, float32, tf32 (on a CPU an emulation: `tf32_emulation` rounds the float32
inputs and weights of linear/conv/matmul ops to TF32's 10-bit mantissa in the forward pass; on
CUDA the real TF32 flags, scoped), and bf16/fp16 either under `torch.autocast` (float32 model)
or as a model cast to that dtype. Builds: "paper" (the naive build: built in float32 and then cast
or autocast, since surgery refuses reduced-precision models) and "safe" (`build="safe"`).

`sign_failure` measures the sign caveat of T1/T2: alpha^c_{K+1} = (N_Z / N_A) c_W s^c with
s^c = sum_u dy_c / dr_u, over every class c of every image.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from lie_cam.anatomy import cut_at_a
from lie_cam.attacks import BUILDS, ManipulatedModel, ManipulatedVGG, SignWarning, constant_flat, paper_networks
from lie_cam.data import STICKER_SEED, paste_stickers, synthetic_split
from lie_cam.experiments.output import check_output_dir, staged_output
from lie_cam.gradcam import GradCAMResult, gradcam, head_gradcam
from lie_cam.metrics import l1_distance, pointing_hits, score_change
from lie_cam.models import load_embedded, load_embedded_resnet
from lie_cam.plotting import markdown_table

__all__ = [
    "SETTINGS",
    "CASES",
    "explain_from_trunk",
    "MANTISSA_BITS",
    "ulp",
    "round_to_tf32",
    "tf32_emulation",
    "cancelled_constant",
    "tf32_multiplicand_rounding",
    "predicted_score_change",
    "precision_table",
    "sign_failure",
    "write_precision",
    "PRECISION_FILES",
    "summary_markdown",
    "resnet_tables",
]

# (name, dtype of the model / autocast, mode)
SETTINGS: tuple[tuple[str, torch.dtype, str], ...] = (
    ("float64", torch.float64, "cast model"),
    ("float32", torch.float32, "cast model"),
    ("tf32", torch.float32, "tf32"),
    ("bf16", torch.bfloat16, "autocast"),
    ("bf16", torch.bfloat16, "cast model"),
    ("fp16", torch.float16, "autocast"),
    ("fp16", torch.float16, "cast model"),
)
CASES = ("T1", "T2", "T3", "T4-clean", "T4-sticker")  # the paper's attacks; T4 without and with stickers
MANTISSA_BITS = {"float64": 52, "float32": 23, "tf32": 10, "bf16": 7, "fp16": 10}
LARGEST = {"float64": torch.finfo(torch.float64).max, "float32": torch.finfo(torch.float32).max,
           "tf32": torch.finfo(torch.float32).max, "bf16": torch.finfo(torch.bfloat16).max,
           "fp16": torch.finfo(torch.float16).max}

PRECISION_FILES = ("precision.json",)  # what `write_precision` writes


def ulp(value: float, setting: str) -> float:
    """Spacing of the format at |value|: 2^(floor(log2 |value|) - p), p = `MANTISSA_BITS[setting]`."""
    value = abs(float(value))
    if value == 0:
        return 0.0
    return 2.0 ** (math.floor(math.log2(value)) - MANTISSA_BITS[setting])


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """x (float32) rounded to nearest-even with a 10-bit mantissa, as TF32 tensor cores read it."""
    if x.dtype != torch.float32:
        return x
    bits = x.contiguous().view(torch.int32)
    rounded = (bits + 0xFFF + ((bits >> 13) & 1)) & -8192  # -8192 = 0xFFFFE000: keep sign, exponent, 10 bits
    rounded = torch.where(torch.isfinite(x).view_as(bits), rounded, bits)
    return rounded.view(torch.float32).view_as(x)


def _straight_through(x):
    """TF32 values in the forward, the identity in the backward (the emulation rounds the forward only)."""
    if isinstance(x, torch.Tensor) and x.dtype == torch.float32:
        return x + (round_to_tf32(x.detach()) - x).detach() if x.requires_grad else round_to_tf32(x)
    return x


_MULTIPLICANDS: dict[Callable, int] = {F.linear: 2, F.conv2d: 2, torch.matmul: 2, torch.mm: 2, torch.bmm: 2,
                                       torch.Tensor.matmul: 2, torch.Tensor.__matmul__: 2}


class _TF32Emulation(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        count = _MULTIPLICANDS.get(func)
        if count is not None:
            args = tuple(_straight_through(a) if i < count else a for i, a in enumerate(args))
            kwargs = {k: _straight_through(v) if k in ("input", "weight", "other") else v for k, v in kwargs.items()}
        elif func is torch.einsum:
            args = (args[0], *(_straight_through(a) for a in args[1:]))
        return func(*args, **kwargs)


@contextlib.contextmanager
def tf32_emulation() -> Iterator[None]:
    """Inside: the float32 input and weight of every F.linear, F.conv2d, matmul/mm/bmm and einsum are
    rounded to TF32 (10-bit mantissa) in the forward pass; biases and accumulation stay float32."""
    with _TF32Emulation():
        yield


@contextlib.contextmanager
def _tf32_cuda() -> Iterator[None]:
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _context(setting: str, dtype: torch.dtype, mode: str, device: torch.device):
    if mode == "autocast":
        return torch.autocast(device_type=device.type, dtype=dtype)
    if setting == "tf32":
        return _tf32_cuda() if device.type == "cuda" else tf32_emulation()
    return contextlib.nullcontext()


def _input_free_pooled(network: ManipulatedModel) -> tuple[float, torch.Tensor] | None:
    """(c_W, z): the added column's weight and the pooled input-free A^{K+1} that T1/T2's paper build folds
    (None for T3/T4 and the safe build)."""
    if network.technique not in ("T1", "T2") or network.build == "safe":
        return None
    c_W = float(network.classifier[0].weight[0, -1].detach())  # the widened first Linear's added column
    side = network.input_size // 2**network.halvings
    if network.technique == "T1":
        free = torch.full((side, side), float(network.last_conv.bias[-1].detach()) if isinstance(network, ManipulatedVGG)
                          else network.added_channel.bias, dtype=torch.float64)
    else:
        free = network.explained_layer.pattern.to(torch.float64)
    with torch.no_grad():
        return c_W, network.pooled_features(free[None, None])


def cancelled_constant(network: ManipulatedModel) -> float | None:
    """C = c_W S_Z, the constant T1/T2's fold cancels (None for T3/T4, which cancel nothing)."""
    folded = _input_free_pooled(network)
    return None if folded is None else folded[0] * folded[1].sum().item()


def tf32_multiplicand_rounding(network: ManipulatedModel) -> float | None:
    """|c_W| sum_p |z_p - tf32(z_p)|: what TF32's rounding of the first Linear's multiplicands (10 mantissa
    bits) does to c_W sum z, which the bias -C no longer cancels exactly. 0 for a value TF32 holds exactly
    (T1's c_A = 100); not for T2's image, whose grey levels it rounds. None where nothing is folded."""
    folded = _input_free_pooled(network)
    if folded is None:
        return None
    c_W, z = folded
    c_W_rounded = round_to_tf32(torch.tensor(c_W, dtype=torch.float32)).double().item()
    exact = c_W * z.sum().item()
    rounded = c_W_rounded * round_to_tf32(z.float()).double().sum().item()
    return abs(exact - rounded)


def predicted_score_change(setting: str, build: str, attack: str, constant: float | None, eps: float = 0.01,
                           branch_peak: float | None = None, multiplicands: float | None = None
                           ) -> tuple[float | str, str]:
    """The prediction and its basis. T1/T2 paper build: ulp of C in the format the bias lives in
    (float32 for tf32; plus, for tf32, `multiplicands` = `tf32_multiplicand_rounding`: the injected values
    rounded to 10 mantissa bits), "overflow" where C exceeds the format; safe build: 0 (the float64 fold
    cancels exactly). T3/T4-sticker: eps, "overflow" where c_F max F(x) or c_G c_F sum F(x) (`branch_peak`)
    exceeds the format of A (the paper build keeps A in the reduced format); T4-clean: 0."""
    fmt = "float32" if setting == "tf32" else setting
    if attack in ("T1", "T2"):
        if build == "safe":
            return 0.0, "safe build: c_W (sum z - S_Z) in float64 is exactly 0 for the input-free A^{K+1}"
        if constant >= LARGEST[fmt]:
            return "overflow", f"C = {constant:.4g} exceeds the largest {fmt} ({LARGEST[fmt]:.5g})"
        basis = f"ulp of C = {constant:.4g} in {fmt}"
        if setting == "tf32":
            rounding = multiplicands or 0.0
            basis += (f" + {rounding:.4g}, TF32's rounding of the injected values c_W z (TF32 rounds multiplicands "
                      f"only; ulp_10(C) would be {ulp(constant, 'tf32'):.4g})")
            return ulp(constant, fmt) + rounding, basis
        return ulp(constant, fmt), basis
    if attack == "T4-clean":
        return 0.0, "no sticker: F = 0, A^{K+1} = 0, G = 0"
    if build == "paper" and branch_peak is not None and branch_peak >= LARGEST[fmt]:
        return "overflow", f"max(c_F max F, c_G c_F sum F) = {branch_peak:.4g} exceeds the largest {fmt}"
    return eps, "|G| < eps = 0.01"


def explain_from_trunk(network: ManipulatedModel, h: torch.Tensor, x: torch.Tensor, context
                       ) -> tuple[GradCAMResult | None, torch.Tensor, torch.Tensor, str | None]:
    """Grad-CAM of a manipulated network from its trunk's output h = network.trunk(x) (shared by every
    network of a setting: the surgery leaves the trunk as it was), inside the setting's context; equal to
    `gradcam(network, x)` there (tests pin this). Returns (result, logits, A^{K+1}, error): a non-finite
    score or map is recorded as the error, with result None, not raised."""
    with context():
        with torch.no_grad():
            a = network.activations_from(h, x)
        try:
            result = head_gradcam(network.head, a)
        except ValueError as error:
            with torch.no_grad():
                return None, network.head(a), a[:, -1], str(error)
    return result, result.logits, a[:, -1], None


@contextlib.contextmanager
def _overflow_watch(network: nn.Module, seen: list) -> Iterator[None]:
    """Appends the name of every module of `network` whose output holds an inf or NaN while inside."""
    def hook(name):
        def check(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.is_floating_point() and not bool(torch.isfinite(output).all()):
                seen.append(name)
        return check

    handles = [m.register_forward_hook(hook(n)) for n, m in network.named_modules() if n]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _setting_models(model: nn.Module, dtype: torch.dtype, mode: str, build: str) -> tuple[nn.Module, dict]:
    """The original and its networks as a user would get them in this setting."""
    if mode == "cast model" and dtype in (torch.float16, torch.bfloat16):
        original = copy.deepcopy(model).to(dtype)
        if build == "safe":
            return original, paper_networks(original, build="safe")
        built = paper_networks(copy.deepcopy(model).float(), build="paper")  # build in float32, then cast
        return original, {k: v.to(dtype) for k, v in built.items()}
    base = copy.deepcopy(model).to(torch.float64 if dtype == torch.float64 else torch.float32)
    return base, paper_networks(base, build=build)


def _branch_peak(network: ManipulatedModel, x: torch.Tensor) -> float:
    """The largest value the paper build puts in A's format for T3/T4: max(c_F max F(x), c_G c_F sum F(x))
    (A^{K+1} itself, and the score branch's argument), with the branch evaluated in float64."""
    injection = network.explained_layer
    with torch.no_grad():
        f = copy.deepcopy(injection.branch).double()(x.double())
    peak = injection.c_F * float(f.max())
    return max(peak, network.score_branch.c_G * injection.c_F * float(f.flatten(1).sum(1).max()))


def _signs_measured(study: Callable) -> Callable:
    """`study` with SignWarning silenced: it builds the paper's T1/T2 on purpose and records where their
    Grad-CAM misses its target (the L1 column), which is the measurement, not a surprise."""

    @functools.wraps(study)
    def measured(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SignWarning)
            return study(*args, **kwargs)

    return measured


@_signs_measured
def precision_table(model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                    settings: tuple[tuple[str, torch.dtype, str], ...] = SETTINGS,
                    builds: tuple[str, ...] = ("paper", "safe"), progress: bool = False) -> list[dict]:
    """One row per (setting, build, attack): accuracy, accuracy_change, max_score_change,
    predicted_score_change (+ its basis), l1_to_target, flips, nonfinite, overflow (the modules whose
    output held an inf or NaN), mode (and for T4 `fired`,
    the share of images whose A^{K+1} is not all zero). Every network, the original included, is explained
    with Grad-CAM from one shared trunk pass per setting (`explain_from_trunk`, `lie_cam.anatomy.cut_at_a`), inside the
    setting's context; scores are compared with the original network
    in the same setting, and so is T4-clean's target, the original's map."""
    model = model.eval()
    device = next(model.parameters()).device
    labels = labels.to(device)
    x_sticker, _ = paste_stickers(x.float(), [STICKER_SEED + i for i in range(len(x))])
    rows: list[dict] = []
    peaks: dict[str, float] = {}
    for setting, dtype, mode in settings:
        in_dtype = dtype if mode == "cast model" else (torch.float64 if dtype == torch.float64 else torch.float32)
        inputs = {"clean": x.to(device=device, dtype=in_dtype), "sticker": x_sticker.to(device=device, dtype=in_dtype)}
        context = lambda: _context(setting, dtype, mode, device)  # noqa: E731 - a fresh context per use
        honest: dict[str, GradCAMResult] = {}
        trunk: dict[str, torch.Tensor] = {}
        for build in builds:
            started = time.time()
            original, networks = _setting_models(model, dtype, mode, build)
            if not honest:  # the original and the trunk are the same in both builds
                cut = cut_at_a(original)
                for kind, xs in inputs.items():
                    with context():
                        with torch.no_grad():
                            trunk[kind] = networks["T1"].trunk(xs)
                            a = cut.to_a(trunk[kind])
                        honest[kind] = head_gradcam(cut.head, a)
            for attack in CASES:
                technique, kind = attack.split("-")[0], "sticker" if attack == "T4-sticker" else "clean"
                network, hon, xs = networks[technique], honest[kind], inputs[kind]
                overflowed: list[str] = []
                with _overflow_watch(network, overflowed):
                    result, logits, extra, error = explain_from_trunk(network, trunk[kind], xs, context)
                logits, y_o = logits.double(), hon.logits.double()
                finite = torch.isfinite(logits).all(dim=1)
                l1: float | str | None = error and f"error: {error}"
                if result is not None:
                    target = network.target_explanation(extra=extra.detach().float(), honest=hon.normalized.float())
                    l1 = l1_distance(target.double(), result.normalized.double()).mean().item()
                peak_key = f"{attack} {in_dtype}"  # the branch sees the input as rounded to this setting's dtype
                if technique in ("T3", "T4") and peak_key not in peaks:
                    peaks[peak_key] = _branch_peak(network, inputs[kind])
                constant = cancelled_constant(network)
                predicted, basis = predicted_score_change(setting, build, attack, constant, branch_peak=peaks.get(peak_key),
                                                          multiplicands=tf32_multiplicand_rounding(network))
                original_accuracy = (y_o.argmax(1) == labels).double().mean().item()
                accuracy = (logits.argmax(1) == labels).double().mean().item()
                row = {
                    "setting": setting, "mode": mode, "build": build, "attack": attack, "n": len(x),
                    "emulated": setting == "tf32" and device.type != "cuda",
                    "accuracy": accuracy, "accuracy_change": accuracy - original_accuracy,
                    "original_accuracy": original_accuracy,
                    "max_score_change": score_change(y_o, logits).max().item() if bool(finite.all()) else "nan",
                    "predicted_score_change": predicted, "predicted_basis": basis, "cancelled_constant": constant,
                    "l1_to_target": l1, "flips": int(((logits.argmax(1) != y_o.argmax(1)) | ~finite).sum()),
                    "nonfinite": int((~finite).sum()),
                    "overflow": sorted(set(overflowed)),  # modules whose output held inf/NaN
                }
                if technique == "T4":
                    row["fired"] = (extra.flatten(1).amax(1) > 0).double().mean().item()
                rows.append(row)
            if progress:
                print(f"{setting:8s} {mode:10s} {build:5s} {time.time() - started:5.1f}s", flush=True)
    return rows


def sign_failure(model: nn.Module, x: torch.Tensor, build: str = "paper", c_A: float = 100.0,
                 c_W: float = 100.0, input_size: int | None = None) -> dict:
    """alpha^c_{K+1} of T1 for every class c of every image (float64): the rate at which it is <= 0,
    overall, for the predicted class, and per class. Where it is <= 0, ReLU(sum_k alpha_k A^k) drops
    the dominant term and the map is not the target (empty, or the honest map's residue).
    input_size: the side of x (None: x's own side); ValueError naming it when they differ."""
    side = x.shape[-1]
    if input_size is not None and input_size != side:
        raise ValueError(f"input_size={input_size} but x is {tuple(x.shape[-2:])}: give images of that size, "
                         "or leave input_size out")
    model64 = copy.deepcopy(model).double().eval()
    x64 = x.double()
    t1 = constant_flat(model64, c_A=c_A, c_W=c_W, build=build, input_size=side)
    with torch.no_grad():
        a = t1.activations(x64)  # A once; each class is one backward through the head
    logits = t1.head(a).detach()
    n, classes = logits.shape
    alpha = torch.empty(n, classes, dtype=torch.float64)
    l1 = torch.empty(n, classes, dtype=torch.float64)
    for c in range(classes):
        with warnings.catch_warnings():  # the failures are what is measured here
            warnings.simplefilter("ignore", SignWarning)
            result = head_gradcam(t1.head, a, target=c)
        alpha[:, c] = result.alpha[:, -1]
        l1[:, c] = l1_distance(torch.ones_like(result.maps), result.normalized)
    top = logits.argmax(1)
    failed = alpha <= 0
    return {
        "build": build, "n_images": n, "n_classes": classes,
        "rate_all_classes": failed.double().mean().item(),
        "rate_predicted_class": failed[torch.arange(n), top].double().mean().item(),
        "rate_per_class": failed.double().mean(0).tolist(),
        "l1_failed_mean": l1[failed].mean().item() if bool(failed.any()) else None,
        "l1_held_mean": l1[~failed].mean().item() if bool((~failed).any()) else None,
        "alpha": alpha,
        "l1": l1,
    }


def write_precision(out: str | Path, limit: int = 64, progress: bool = True) -> dict:
    """`python -m lie_cam precision`: the table and the sign-failure rates (first min(limit, 32) scenes)
    on the embedded VGG's first `limit` test scenes, to out/precision.json."""

    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"--limit must be a positive number of images, got {limit!r}")
    check_output_dir(out, PRECISION_FILES)
    started = time.time()
    x, labels, _ = synthetic_split("test", limit)
    model = load_embedded()
    rows = precision_table(model, x, labels, progress=progress)
    signs = {build: {k: v for k, v in sign_failure(model, x[: min(limit, 32)], build).items() if k not in ("alpha", "l1")}
             for build in BUILDS}
    result = {
        "model": "embedded compact VGG-16", "n": limit, "device": "cpu",
        "tf32": "emulated on CPU: float32 inputs and weights of linear/conv/matmul/einsum rounded to a 10-bit "
                "mantissa in the forward pass (biases, accumulation and the backward stay float32)",
        "score_change": "max over images of max_c |y_n,c - y_o,c|, the original evaluated in the same setting",
        "rows": rows, "sign_failure": signs, "seconds": round(time.time() - started, 1),
        "threads": torch.get_num_threads(),  # float32 sums, and so the measured score changes, depend on it
    }
    with staged_output(out, PRECISION_FILES) as stage:
        (stage / "precision.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def summary_markdown(rows: list[dict]) -> str:
    """The precision rows as a Markdown table narrow enough for the book: the setting (`*`: emulated on
    CPU; `, cast`: the model cast to the dtype, else autocast), measured against predicted score change,
    flips, L1. precision.json keeps every field."""
    def short(value):
        return value.split(":")[0] if isinstance(value, str) else value

    table = [{"setting": r["setting"] + ("*" if r["emulated"] else "") + (", cast" if r["mode"] == "cast model" else ""),
              "build": r["build"], "attack": r["attack"], "max Δy": r["max_score_change"],
              "predicted": r["predicted_score_change"], "flips": r["flips"], "L1": short(r["l1_to_target"])}
             for r in rows]
    return markdown_table(table, floatfmt=".3g")


@_signs_measured
def resnet_tables(model: nn.Module | None = None, n: int = 200, batch_size: int = 50,
                  dtype: torch.dtype = torch.float32) -> dict[str, dict[str, float]]:
    """Tables 1-2 rows for a ResNet (default: the compact ResNet), each network evaluated on its own
    with `lie_cam.gradcam`: accuracy, mean score change, mean L1 to the target, pointing game (clean),
    and for T4 the same on the stickered images."""
    model = (load_embedded_resnet() if model is None else model).eval().to(dtype)
    networks = paper_networks(model, build="paper")
    sums: dict[str, dict[str, float]] = {}

    def add(name: str, key: str, values: torch.Tensor) -> None:
        sums.setdefault(name, {}).setdefault(key, 0.0)
        sums[name][key] += float(values.double().sum())

    for start in range(0, n, batch_size):
        x, labels, masks = synthetic_split("test", min(batch_size, n - start), start)
        x = x.to(dtype)
        seeds = [STICKER_SEED + start + i for i in range(len(x))]
        for kind, xs in (("clean", x), ("sticker", paste_stickers_for(x, seeds))):
            honest = gradcam(model, xs)
            name_o = "original" if kind == "clean" else "original (sticker)"
            add(name_o, "accuracy", (honest.logits.argmax(1) == labels).double())
            add(name_o, "pointing", pointing_hits(honest.maps, masks).double())
            for name, network in networks.items():
                if kind == "sticker" and name != "T4":
                    continue
                lie = gradcam(network, xs)
                key = name if kind == "clean" else "T4 (sticker)"
                target = network.target_explanation(xs, honest=honest.normalized)
                add(key, "accuracy", (lie.logits.argmax(1) == labels).double())
                add(key, "score_change", score_change(honest.logits, lie.logits))
                add(key, "l1_to_target", l1_distance(target, lie.normalized))
                add(key, "pointing", pointing_hits(lie.maps, masks).double())
    return {name: {k: v / n for k, v in values.items()} for name, values in sums.items()}


def paste_stickers_for(x: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """x with the paper's three stickers per image (positions from `seeds`)."""
    return paste_stickers(x, seeds)[0]
