"""Benchmarks: ratios against baselines measured in the same run (never absolute goals in tests).

    python benchmarks/run.py --json benchmarks/latest.json                 # CPU: embedded model + full VGG-16 table
    python benchmarks/run.py --device cuda --full-vgg16 --images 512 --batch-size 128 --table-only --json gpu.json

Keys written (CPU, embedded model):
  gradcam_speedup_vs_pytorch_grad_cam  our Grad-CAM's images/s over pytorch-grad-cam's GradCAM
  gradcam_speedup_vs_captum            ... over captum's LayerGradCam (same model, batch, layer)
  table_cost_vs_forward                the seven-evaluation table (original + T1-T4 on clean,
                                       original + T4 on stickered images, as `reproduce` runs it:
                                       `Evaluator.run_split`) over one plain forward of the original
                                       model over the same clean and stickered images, in the same batches
  table_cost_vs_forward_full_vgg16     the same ratio on torchvision's VGG-16 at full width (random
                                       weights; --full-vgg16-images images); skipped with --no-full-vgg16
  table_speedup_vs_naive               the naive per-network loop (each network alone, Grad-CAM with
                                       a full backward as pytorch-grad-cam does) over ours
  loader_images_per_s                  the data loader alone (synthetic scenes; JPEG folder)
With --device cuda it also measures the table's images/s and its ratio to a plain forward
under bf16 autocast (float32 runs with TF32 off), the loader, and the projected time of the
reproduction on 50,000 + 50,000 images.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lie_cam.compat import import_torchvision  # noqa: E402
from lie_cam.data import SyntheticScenes, paste_stickers  # noqa: E402
from lie_cam.experiments.engine import Evaluator  # noqa: E402
from lie_cam.gradcam import gradcam, target_layer  # noqa: E402
from lie_cam.imagenet import ImageNetFolder, make_loader  # noqa: E402
from lie_cam.experiments.reproduce import STICKER_SEED, tf32_scope  # noqa: E402
from lie_cam.attacks import paper_networks  # noqa: E402

GOALS = {
    "gradcam_speedup_vs_pytorch_grad_cam": 2.5,
    "gradcam_speedup_vs_captum": 0.9,
    "table_cost_vs_forward": 1.3,  # at most
    "table_cost_vs_forward_full_vgg16": 1.2,  # at most
    "table_speedup_vs_naive": 6.0,
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Shortest wall time of `repeats` calls after one warm-up call."""
    return timed_together({"fn": fn}, device, repeats)["fn"]


def timed_together(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, float]:
    """The shortest wall time of each function over `repeats` rounds, the functions run in turn
    (round-robin) after one warm-up each, so that a slow patch of the machine hits all of them
    alike. The minimum, not the median: other work on a shared machine only ever adds time, and
    a burst of it during one function's rounds moves a median of 5 by a factor of two."""
    for fn in fns.values():
        fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def naive_gradcam(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Grad-CAM the way pytorch-grad-cam computes it: a forward with autograd everywhere and a
    full backward (parameter gradients included), activations and gradients caught by hooks."""
    layer = target_layer(model)
    store = {}

    def keep(module, inputs, output):
        store["a"] = output
        output.register_hook(lambda grad: store.__setitem__("g", grad))

    handle = layer.register_forward_hook(keep)
    try:
        model.zero_grad(set_to_none=True)
        logits = model(x)
        logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    finally:
        handle.remove()
    alpha = store["g"].mean(dim=(2, 3))
    return torch.relu(torch.einsum("bk,bkhw->bhw", alpha, store["a"].detach()))


def batches_of(x: torch.Tensor, batch_size: int):
    return [x[i : i + batch_size] for i in range(0, x.shape[0], batch_size)]


def bench_gradcam(model, x, batch_size, device, repeats) -> dict:
    from captum.attr import LayerGradCam
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = target_layer(model)
    chunks = batches_of(x, batch_size)
    with torch.no_grad():
        classes = [model(c).argmax(1) for c in chunks]
    captum = LayerGradCam(model, layer)

    def ours():
        for c in chunks:
            gradcam(model, c)

    def theirs_captum():
        for c, k in zip(chunks, classes):
            captum.attribute(c, target=k, relu_attributions=True)

    def theirs_pgc():
        # its hooks live as long as the object: released on exit so they never slow the others
        with GradCAM(model=model, target_layers=[layer]) as peer:
            for c, k in zip(chunks, classes):
                peer(input_tensor=c, targets=[ClassifierOutputTarget(int(i)) for i in k])

    t = timed_together({"ours": ours, "captum": theirs_captum, "pytorch_grad_cam": theirs_pgc}, device, repeats)
    n = x.shape[0]
    return {
        "gradcam_images_per_s": {k: n / v for k, v in t.items()},
        "gradcam_speedup_vs_pytorch_grad_cam": t["pytorch_grad_cam"] / t["ours"],
        "gradcam_speedup_vs_captum": t["captum"] / t["ours"],
    }


def bench_table(model, x, batch_size, device, repeats, autocast_dtype=None, naive_too=True) -> dict:
    networks = paper_networks(model)
    evaluator = Evaluator(model, networks, autocast_dtype=autocast_dtype)
    chunks = batches_of(x, batch_size)
    seeds = [[STICKER_SEED + i * batch_size + j for j in range(c.shape[0])] for i, c in enumerate(chunks)]
    stickered = [paste_stickers(c, s)[0] for c, s in zip(chunks, seeds)]
    autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype
                else torch.autocast(device_type=device.type, enabled=False))
    # All three see the same prepared batches: pasting stickers and putting each clean batch and
    # its stickered copy into one tensor is data preparation (in `reproduce`, beside the loader),
    # not timed with the networks.
    pairs = [torch.cat([c, s]).contiguous(memory_format=torch.channels_last) for c, s in zip(chunks, stickered)]

    # The baseline: the original model alone, a plain forward over the same clean and stickered
    # images, in the same batches of 2 x batch_size that `run_split` feeds the trunk.
    def forward():
        with torch.no_grad(), autocast:
            for both in pairs:
                model(both)

    def table():
        for c, both in zip(chunks, pairs):
            evaluator.run_split(both, c.shape[0], second_names=["original", "T4"])

    def naive():
        everything = {"original": model, **networks}
        for c, s in zip(chunks, stickered):
            for net in everything.values():
                naive_gradcam(net, c)
            for name in ("original", "T4"):
                naive_gradcam(everything[name], s)

    together = timed_together({"forward": forward, "table": table}, device, repeats)
    t_forward, t_table = together["forward"], together["table"]
    out = {
        "table_images_per_s": x.shape[0] / t_table,
        "forward_images_per_s": 2 * x.shape[0] / t_forward,
        "table_cost_vs_forward": t_table / t_forward,
    }
    if autocast_dtype is None and naive_too:
        t_naive = timed(naive, device, max(1, repeats // 2))
        out["naive_images_per_s"] = x.shape[0] / t_naive
        out["table_speedup_vs_naive"] = t_naive / t_table
    return out


def bench_loader(n: int, workers: int) -> dict:
    from PIL import Image

    out = {}
    loader = make_loader(SyntheticScenes("test", n), batch_size=32, workers=workers)
    start = time.perf_counter()
    for _ in loader:
        pass
    out["synthetic_scenes"] = n / (time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root) / "n01440764"
        folder.mkdir()
        generator = torch.Generator().manual_seed(0)
        for i in range(n):
            pixels = (torch.rand(375, 500, 3, generator=generator) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / f"img{i:04d}.JPEG", quality=90)
        loader = make_loader(ImageNetFolder(root), batch_size=32, workers=workers)
        start = time.perf_counter()
        for _ in loader:
            pass
        out["jpeg_folder_500x375"] = n / (time.perf_counter() - start)
    return out


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def vgg16_random() -> torch.nn.Module:
    """torchvision's VGG-16 at full width with seeded random weights, in eval mode."""
    import_torchvision()
    from torchvision.models import vgg16

    torch.manual_seed(0)
    return vgg16(weights=None).eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--full-vgg16", action="store_true",
                        help="measure torchvision VGG-16 at full width (random weights) instead of the embedded model")
    parser.add_argument("--no-full-vgg16", action="store_true",
                        help="skip the full VGG-16 table ratio that follows the embedded model's benchmarks")
    parser.add_argument("--full-vgg16-images", type=int, default=16)
    parser.add_argument("--full-vgg16-batch-size", type=int, default=16,
                        help="clean images per batch; the trunk sees twice as many (clean + stickered)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's). On a loaded shared machine use 1: with more, each of "
                             "the table's many small parallel ops waits until all its threads are scheduled")
    parser.add_argument("--table-only", action="store_true",
                        help="only the table against a plain forward (e.g. full VGG-16 on a CPU)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tf32_scope(False):  # float32 means float32: TF32 off on CUDA
        report = measure(args, device)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)


def measure(args: argparse.Namespace, device: torch.device) -> dict:
    from lie_cam.data import synthetic_split
    from lie_cam.models import load_embedded

    model = vgg16_random() if args.full_vgg16 else load_embedded()
    model_name = "torchvision VGG-16 (random weights)" if args.full_vgg16 else "embedded compact VGG-16"
    model = model.to(device).to(memory_format=torch.channels_last)
    x = synthetic_split("test", args.images)[0].to(device).contiguous(memory_format=torch.channels_last)
    report: dict = {
        "model": model_name,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(), "images": args.images, "batch_size": args.batch_size,
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(sys.argv),
    }
    if device.type == "cpu" and not args.table_only:
        report.update(bench_gradcam(model, x, args.batch_size, device, args.repeats))
    report.update(bench_table(model, x, args.batch_size, device, args.repeats, naive_too=not args.table_only))
    if args.full_vgg16:
        report["table_cost_vs_forward_full_vgg16"] = report["table_cost_vs_forward"]
    elif not args.no_full_vgg16:
        n = args.full_vgg16_images
        full = vgg16_random().to(device).to(memory_format=torch.channels_last)
        report["full_vgg16"] = bench_table(full, x[:n], args.full_vgg16_batch_size, device, max(3, args.repeats // 2),
                                           naive_too=False)
        report["full_vgg16"].update(images=n, batch_size=args.full_vgg16_batch_size)
        report["table_cost_vs_forward_full_vgg16"] = report["full_vgg16"]["table_cost_vs_forward"]
        del full
    if device.type == "cuda":
        report["bf16"] = bench_table(model, x, args.batch_size, device, args.repeats, autocast_dtype=torch.bfloat16)
    if not args.table_only or device.type == "cuda":
        report["loader_images_per_s"] = bench_loader(args.images, args.workers)
    if device.type == "cuda":
        # 50,000 clean validation images, each also evaluated with stickers: the loader (in its worker
        # processes) and the GPU overlap, so the slower of the two sets the pace.
        loader = report["loader_images_per_s"]["jpeg_folder_500x375"]
        for name, numbers in (("float32", report), ("bf16", report["bf16"])):
            pace = min(numbers["table_images_per_s"], loader)
            report[f"projected_seconds_50k_plus_50k_{name}"] = 50_000 / pace
    return report


def print_report(report: dict) -> None:
    print(f"{'measure':40s} {'value':>10s} {'goal':>10s}")
    for key, goal in GOALS.items():
        if key in report:
            sign = "<=" if key.startswith("table_cost") else ">="
            ok = report[key] <= goal if sign == "<=" else report[key] >= goal
            print(f"{key:40s} {report[key]:10.2f} {sign + str(goal):>10s} {'ok' if ok else 'MISSED'}")
    for key in ("table_images_per_s", "forward_images_per_s"):
        print(f"{key:40s} {report[key]:10.1f}")
    for key in ("table_images_per_s", "forward_images_per_s"):
        if "full_vgg16" in report:
            print(f"{'full VGG-16 ' + key:40s} {report['full_vgg16'][key]:10.1f}")
    if "bf16" in report:
        print(f"{'bf16 table_cost_vs_forward':40s} {report['bf16']['table_cost_vs_forward']:10.2f}")
        print(f"{'bf16 table_images_per_s':40s} {report['bf16']['table_images_per_s']:10.1f}")
    for key, value in report.get("loader_images_per_s", {}).items():
        print(f"{'loader ' + key:40s} {value:10.1f}")
    for key, value in report.items():
        if key.startswith("projected_seconds"):
            print(f"{key:40s} {value:10.0f}")


if __name__ == "__main__":
    main()
