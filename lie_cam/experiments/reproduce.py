"""Run the evaluation behind the paper's Tables 1-2 and Figures 1 and 3 (reporting: `lie_cam.experiments.report`).

Evaluates the original network and T1-T4 on clean images, and the original and T4 on
the same images with three stickers each, with the paper's metrics (`lie_cam.metrics`):
accuracy, mean over images of max_c |y_o - y_n|, mean over images of sum_ij |I~_T - I~_n|.
Targets I~_T are each manipulation's own (`ManipulatedVGG.target_explanation`). Grad-CAM's
gradient is Eq. 2's as written by default (`gradient="eq2"`); `gradient="masked"` is the authors'
code's, dy_c/dA * 1[A > 0], with which the paper's numbers were made (`lie_cam.gradcam`).

Every table entry is a count, a sum or a maximum over images (plus the median of the L1
distances, from the per-image values), so a run split over processes (`lie_cam.experiments.distributed`,
`torchrun ... -m lie_cam reproduce`) combines its shards into the one-process numbers.

Profiles: "embedded" (the compact VGG-16 on the synthetic test split, offline), and for
online users "imagenette" / "imagenet" (torchvision's VGG-16 with ImageNet weights).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from lie_cam.anatomy import feature_size
from lie_cam.attacks import paper_networks
from lie_cam.data import SPLITS, STICKER_SEED, SyntheticScenes, paste_stickers
from lie_cam.experiments import distributed
from lie_cam.experiments.engine import Evaluator
from lie_cam.experiments.report import PAPER_TABLE1, PAPER_TABLE2, Reproduction, check_output_dir
from lie_cam.gradcam import GradCAMResult, check_gradient
from lie_cam.imagenet import load_profile, make_loader
from lie_cam.metrics import l1_distance, pointing_hits, score_change, top1_correct
from lie_cam.models import load_embedded, load_embedded_resnet, load_vgg16
from lie_cam.profiles import check_profile

__all__ = [
    "PAPER_TABLE1",
    "PAPER_TABLE2",
    "EMBEDDED_DEFAULT_N",
    "Reproduction",
    "TableTally",
    "load_model",
    "check_settings",
    "tf32_scope",
    "run_reproduction",
]

EMBEDDED_DEFAULT_N = 2000
ARCHITECTURES = ("vgg", "resnet")  # resnet: the compact ResNet (embedded profile only)


def _readable(getter):
    """getter(), or None where torch refuses to answer (it does after a mix of its TF32 APIs)."""
    try:
        return getter()
    except RuntimeError:
        return None


@contextlib.contextmanager
def tf32_scope(enabled: bool) -> Iterator[None]:
    """Allow TF32 in CUDA matmuls and convolutions only if `enabled`, inside the block; the
    process's previous settings come back on exit (also on an exception). Off by default in
    the reproduction: TF32 would change the scores in the third decimal."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    legacy = _readable(lambda: (matmul.allow_tf32, cudnn.allow_tf32))  # the flags most users set
    new = None if legacy is not None else (matmul.fp32_precision, cudnn.conv.fp32_precision)
    precision = _readable(torch.get_float32_matmul_precision)
    try:
        if legacy is not None:
            matmul.allow_tf32 = cudnn.allow_tf32 = bool(enabled)
        else:
            matmul.fp32_precision = cudnn.conv.fp32_precision = "tf32" if enabled else "ieee"
        yield
    finally:
        if legacy is not None:
            matmul.allow_tf32, cudnn.allow_tf32 = legacy
        else:
            matmul.fp32_precision, cudnn.conv.fp32_precision = new
        # allow_tf32 sets the matmul precision to "high"/"highest"; put back another value ("medium")
        if precision is not None and _readable(torch.get_float32_matmul_precision) != precision:
            torch.set_float32_matmul_precision(precision)


class TableTally:
    """The sums behind every table entry, one row per (data, network).

    Per row: n, correct, pointing hits, alpha_{K+1} <= 0 (counts); the sums of the score changes
    and of the L1 distances (float64); the maximum score change; the per-image L1 distances (for
    the median). `rows()` combines them over all processes of a distributed run first."""

    COUNTS = ("n", "correct", "hits", "alpha_nonpositive", "alpha_n")

    def __init__(self, keys: list[tuple[str, str]], device: torch.device, pointing: bool) -> None:
        self.keys = list(keys)
        self.pointing = pointing
        self.counts = torch.zeros(len(keys), len(self.COUNTS), dtype=torch.int64, device=device)
        self.sums = torch.zeros(len(keys), 2, dtype=torch.float64, device=device)  # score change, L1
        self.maxima = torch.full((len(keys),), float("-inf"), dtype=torch.float64, device=device)
        self.l1_values: list[list[torch.Tensor]] = [[] for _ in keys]

    def add(self, key: tuple[str, str], correct: torch.Tensor, change: torch.Tensor | None = None,
            l1: torch.Tensor | None = None, hits: torch.Tensor | None = None,
            alpha_extra: torch.Tensor | None = None) -> None:
        """One batch of per-image values for the row `key` = (data, network)."""
        i = self.keys.index(key)
        counts = self.counts[i]
        counts[0] += correct.numel()
        counts[1] += correct.sum()
        if hits is not None:
            counts[2] += hits.sum()
        if alpha_extra is not None:
            counts[3] += (alpha_extra <= 0).sum()
            counts[4] += alpha_extra.numel()
        if change is not None:
            self.sums[i, 0] += change.double().sum()
            self.maxima[i] = torch.maximum(self.maxima[i], change.double().max())
        if l1 is not None:
            self.sums[i, 1] += l1.double().sum()
            self.l1_values[i].append(l1.detach().double())

    def rows(self, pixels: int, group: distributed.Group | None = None) -> list[dict]:
        """The table rows, over all processes: accuracy = correct / n, score_change = sum / n,
        score_change_max, l1 = sum / n, l1_per_pixel = l1 / pixels, l1_median, the share of
        alpha_{K+1} <= 0 (the sign caveat of T1/T2) and, with masks, pointing = hits / n."""
        counts = distributed.all_reduce(self.counts, "sum", group).cpu()
        sums = distributed.all_reduce(self.sums, "sum", group).cpu()
        maxima = distributed.all_reduce(self.maxima, "max", group).cpu()
        out = []
        for i, (data, network) in enumerate(self.keys):
            n, correct, hits, nonpositive, alpha_n = (int(v) for v in counts[i])
            manipulated = network != "original"
            l1 = None
            if manipulated:
                mine = torch.cat(self.l1_values[i]) if self.l1_values[i] else self.sums.new_zeros(0)
                l1 = distributed.gather_values(mine, group).cpu()
            row = {"network": network, "data": data,
                   "accuracy": correct / n if n else None,
                   "score_change": sums[i, 0].item() / n if manipulated and n else None,
                   "l1": sums[i, 1].item() / n if manipulated and n else None,
                   "n": n,
                   "score_change_max": maxima[i].item() if manipulated and n else None,
                   "l1_per_pixel": sums[i, 1].item() / n / pixels if manipulated and n else None,
                   "l1_median": l1.median().item() if manipulated and n else None,
                   # alpha_{K+1} <= 0: the explanation cannot be the lie (the sign caveat of T1/T2)
                   "alpha_extra_nonpositive": nonpositive / alpha_n if manipulated and alpha_n else None}
            if self.pointing:
                row["pointing"] = hits / n if n else None
            out.append(row)
        return out


def check_settings(profile: str, limit: int | None, batch_size: int, dtype: torch.dtype,
                   workers: int | None, data: str | None = None, arch: str = "vgg", gradient: str = "eq2") -> None:
    """ValueError/TypeError for arguments no run can use, before anything is loaded."""
    check_profile(profile)
    check_gradient(gradient)
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    if arch == "resnet" and profile != "embedded":
        raise ValueError("arch 'resnet' is the compact ResNet trained on the synthetic scenes: use the embedded profile")
    for name, value, lowest in (("limit", limit, 1), ("batch_size", batch_size, 1), ("workers", workers, 0)):
        if value is None and name != "batch_size":
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < lowest:
            raise ValueError(f"{name} must be at least {lowest}, got {value}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if profile == "embedded" and data is not None:
        raise ValueError("the embedded profile renders its own scenes and uses no data folder: drop data "
                         "(--data), or choose the imagenette or imagenet profile")


def _summary(error: BaseException, limit: int = 200) -> str:
    """An exception as one line of at most `limit` characters."""
    text = f"{type(error).__name__}: {' '.join(str(error).split())}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_model(profile: str, checkpoint: str | Path | None = None, arch: str = "vgg") -> nn.Module:
    """The profile's original network in eval mode: the embedded compact VGG-16 (from its
    safetensors file, or `checkpoint`), else torchvision's VGG-16 (ImageNet weights, or a
    `checkpoint` state_dict); arch="resnet": the compact ResNet trained on the same scenes.
    A file that is missing, a folder, empty, not a weights file, or weights of another
    architecture raises one clear error (ValueError / FileNotFoundError)."""
    embedded = load_embedded_resnet if arch == "resnet" else load_embedded
    if checkpoint is None:
        return embedded() if profile == "embedded" else load_vgg16()
    path = Path(checkpoint).expanduser()
    expected = (f"a safetensors state_dict of the embedded compact {'ResNet' if arch == 'resnet' else 'VGG-16'} (as `python -m lie_cam.train --out FILE` "
                "writes)" if profile == "embedded" else
                "a torchvision VGG-16 state_dict (.safetensors, or .pth saved with torch.save(model.state_dict()))")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; expected {expected}")
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a folder; expected a file holding {expected}")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty; expected {expected}")
    try:
        return embedded(path) if profile == "embedded" else load_vgg16(path)
    except Exception as error:  # safetensors' own errors, torch.load's, load_state_dict's
        raise ValueError(f"checkpoint {path} cannot be used: expected {expected} ({_summary(error, 600)})") from error


def _dataset(profile: str, data: str | None, limit: int | None,
             arch: str = "vgg") -> tuple[torch.utils.data.Dataset | None, int, str]:
    """(dataset or None for the embedded scenes, number of images, description)."""
    if profile == "embedded":
        n = EMBEDDED_DEFAULT_N if limit is None else limit
        model = "ResNet" if arch == "resnet" else "VGG-16"
        return None, n, f"embedded compact {model} on {n} synthetic test scenes (seeds {SPLITS['test']}+)"
    dataset, description = load_profile(profile, data=data, limit=limit)
    return dataset, len(dataset), description


def _shard_batches(dataset, indices: range, batch_size: int, workers: int | None,
                   device: torch.device) -> Iterator[tuple]:
    """(x, labels, masks or None, index of the batch's first image) over the images `indices`."""
    if len(indices) == 0:
        return
    if dataset is None:
        part = SyntheticScenes("test", len(indices), start=indices.start)
    else:
        part = torch.utils.data.Subset(dataset, indices)
    start = indices.start
    for batch in make_loader(part, batch_size=batch_size, workers=workers, device=str(device)):
        x, labels, masks = batch if len(batch) == 3 else (*batch, None)
        yield x, labels, masks, start
        start += x.shape[0]


def _target(network: nn.Module, result: GradCAMResult, honest: GradCAMResult, x: torch.Tensor) -> torch.Tensor:
    """The network's own target explanation; from A^{K+1} when the engine kept it, else from x."""
    if result.extra is not None:
        return network.target_explanation(extra=result.extra, honest=honest.normalized)
    return network.target_explanation(x, honest=honest.normalized)


def _evaluate_batch(evaluator: Evaluator, x: torch.Tensor, start: int, device: torch.device, dtype: torch.dtype):
    """(x, x with stickers, results on x, results of the original and T4 on x with stickers), from one
    trunk pass over both halves of one batch (clean first, then stickered)."""
    x = x.to(device=device, dtype=dtype, non_blocking=True)
    b = x.shape[0]
    x_sticker, _ = paste_stickers(x, [STICKER_SEED + start + i for i in range(b)])
    both = torch.empty((2 * b, *x.shape[1:]), dtype=dtype, device=device, memory_format=torch.channels_last)
    both[:b], both[b:] = x, x_sticker
    results, sticker_results = evaluator.run_split(both, b, second_names=["original", "T4"])
    return both[:b], both[b:], results, sticker_results


def _tally_batch(tally: TableTally, kind: str, networks: dict, batch: torch.Tensor,
                 results: dict[str, GradCAMResult], labels: torch.Tensor, masks: torch.Tensor | None) -> None:
    """Adds one batch's results of every network to the tally's `kind` ("clean" or "sticker") rows."""
    honest = results["original"]
    for name, result in results.items():
        hits = pointing_hits(result.maps, masks) if masks is not None else None
        correct = top1_correct(result.logits, labels)
        if name == "original":
            tally.add((kind, name), correct, hits=hits)
            continue
        target = _target(networks[name], result, honest, batch)
        tally.add((kind, name), correct, score_change(honest.logits, result.logits),
                  l1_distance(target, result.normalized), hits, result.alpha[:, -1])


def _examples(x: torch.Tensor, x_sticker: torch.Tensor, results: dict, sticker_results: dict) -> dict:
    """The first image's maps, for Figures 1 and 3."""
    return {
        "image": x[0].float().cpu(),
        "stickered_image": x_sticker[0].float().cpu(),
        "maps": {name: r.maps[0].float().cpu() for name, r in results.items()},
        "maps_clean": {name: results[name].maps[0].float().cpu() for name in ("original", "T4")},
        "maps_sticker": {name: r.maps[0].float().cpu() for name, r in sticker_results.items()},
    }


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
    model: nn.Module | None = None,
    arch: str = "vgg",
    gradient: str = "eq2",
) -> Reproduction:
    """Run the tables' evaluation and (if `out` is given) write the tables, results.json, reproduce.json
    and figures there, all at once (rank 0 only, in a distributed run).

    Everything is checked before any work: the arguments, `out`, the device, the data source and
    the model (`checkpoint`, or an already loaded `model`, which is moved to device and dtype).
    Inside a torch.distributed process group (torchrun) each process evaluates its shard of
    whole batches (`lie_cam.experiments.distributed.shard`) and the rows are combined over all of them.
    gradient: Grad-CAM's gradient, "eq2" (default) or "masked" (the authors' code); the run record
    (`settings`) names it, and `run` the torch CPU threads (float32 sums depend on their number)."""
    check_settings(profile, limit, batch_size, dtype, workers, data, arch, gradient)
    if model is not None and checkpoint is not None:
        raise ValueError("give a checkpoint or a loaded model, not both")
    group = distributed.current()
    if out is not None and group.is_main:  # only rank 0 writes
        check_output_dir(out)
    device = torch.device(device) if device is not None else distributed.device_for(None)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} was asked for but CUDA is not available here: use device='cpu'")
    started = time.time()
    dataset, n, description = _dataset(profile, data, limit, arch)  # data errors before the model
    model = load_model(profile, checkpoint, arch) if model is None else model
    indices = distributed.shard(n, batch_size, group.rank, group.world_size)
    with tf32_scope(tf32):
        model = model.to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
        networks = paper_networks(model, build="paper")  # the paper's construction: its Tables 1-2
        evaluator = Evaluator(model, networks, autocast_dtype=autocast_dtype, gradient=gradient)
        pixels = feature_size(model) ** 2
        keys = [("clean", name) for name in evaluator.names] + [("sticker", "original"), ("sticker", "T4")]
        tally = TableTally(keys, device, pointing=profile == "embedded")
        examples: dict = {}
        batches = _shard_batches(dataset, indices, batch_size, workers, device)
        if progress and group.is_main:
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=-(-len(indices) // batch_size), desc=f"reproduce {profile}", unit="batch")
        for x, labels, masks, start in batches:
            x, x_sticker, results, sticker_results = _evaluate_batch(evaluator, x, start, device, dtype)
            labels = labels.to(device, non_blocking=True)
            masks = masks.to(device, non_blocking=True) if masks is not None else None
            for kind, batch, batch_results in (("clean", x, results), ("sticker", x_sticker, sticker_results)):
                _tally_batch(tally, kind, networks, batch, batch_results, labels, masks)
            if start == 0:
                examples = _examples(x, x_sticker, results, sticker_results)
        rows = tally.rows(pixels, group)
    images_per_rank = distributed.all_gather_counts(len(indices), group)
    settings = {"profile": profile, "limit": limit, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
                "batch_size": batch_size, "autocast": None if autocast_dtype is None else str(autocast_dtype),
                "tf32": tf32, "arch": arch, "gradient": gradient}
    run = {"world_size": group.world_size, "images_per_rank": images_per_rank,
           "backend": group.backend, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if gradient == "masked":
        description += "; Grad-CAM with the authors' masked gradient"
    reproduction = Reproduction(profile, description, rows, examples, time.time() - started, settings, run)
    if out is not None and group.is_main:
        reproduction.write(out)
    return reproduction
