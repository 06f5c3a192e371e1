"""What `python -m lie_cam audit MODEL` reads, without running code from a file.

    a safetensors state_dict    read with safetensors (never pickle); the architecture from `arch`
                                ("vgg": any torchvision-layout VGG, the embedded compact VGG-16 included,
                                its configuration read off the shapes; "resnet": the compact ResNet of
                                BasicBlocks, its width and depth read off the shapes; "vgg16", "resnet50":
                                torchvision's), or recognised as a VGG when `arch` is None
    an ONNX file                `lie_cam.models.load_onnx` (a graph, no code)
    "module:function"           a model the user builds in Python (`lie_cam.models.from_parts(...)`), the
                                one way code runs, and only the user's own module, named explicitly

Pickles (.pt, .pth, .pkl, .bin, .ckpt, or a file starting with pickle's or torch.save's magic bytes) are
refused: unpickling runs code. Every failure is a ValueError / FileNotFoundError with one clear line.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch
from torch import nn

from lie_cam.compat import import_torchvision
from lie_cam.models import (
    compact_resnet,
    load_onnx,
    read_safetensors,
    vgg_from_state_dict,
    vgg_state_dict_problems,
)

__all__ = ["ARCHITECTURES", "PICKLE_SUFFIXES", "load_audited", "describe_source"]

ARCHITECTURES = ("vgg", "resnet", "vgg16", "resnet50")
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".tar")
_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def describe_source(source: str) -> str:
    """'safetensors', 'onnx' or 'parts' (a module:function spec); ValueError for a pickle."""
    path = Path(source)
    if not path.exists() and _SPEC.match(source):
        return "parts"
    if not path.exists():
        raise FileNotFoundError(f"MODEL {source} does not exist: expected a .safetensors or .onnx file, or "
                                "module:function returning a model")
    if path.is_dir():
        raise ValueError(f"MODEL {source} is a directory: expected a .safetensors or .onnx file")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if path.suffix.lower() in PICKLE_SUFFIXES or head[:1] == b"\x80" or head[:2] == b"PK":
        raise ValueError(f"MODEL {source} is a pickle / torch.save file: refused, since unpickling can run "
                         "arbitrary code; save its state_dict with safetensors.torch.save_file where you trust it")
    if path.suffix.lower() == ".onnx":
        return "onnx"
    return "safetensors"


def _resnet_from_state(state: dict[str, torch.Tensor]) -> nn.Module:
    """The compact ResNet (`lie_cam.models.compact_resnet`) whose width, blocks and classes the shapes say."""
    if "conv1.weight" not in state or "fc.weight" not in state:
        raise ValueError("not a ResNet state_dict: expected conv1.weight and fc.weight (torchvision's ResNet keys)")
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{s}.")}) for s in range(1, 5))
    if not all(blocks):
        raise ValueError(f"not a ResNet state_dict: blocks per stage {blocks}, expected four stages layer1-layer4")
    return compact_resnet(width=int(state["conv1.weight"].shape[0]), layers=blocks,
                          num_classes=int(state["fc.weight"].shape[0]))


def _architecture(arch: str | None, state: dict[str, torch.Tensor]) -> tuple[nn.Module, str]:
    if arch is None:
        if not vgg_state_dict_problems(state):
            return vgg_from_state_dict(state), "vgg (recognised from the keys and shapes)"
        raise ValueError("unknown architecture: the state_dict is not a torchvision-layout VGG; pass --arch "
                         f"(one of {', '.join(ARCHITECTURES)}), an ONNX file, or module:function for a model in parts")
    if arch == "vgg":
        return vgg_from_state_dict(state), "vgg"
    if arch == "resnet":
        return _resnet_from_state(state), "resnet (compact, BasicBlocks)"
    if arch in ("vgg16", "resnet50"):
        torchvision = import_torchvision()
        return getattr(torchvision.models, arch)(weights=None), f"torchvision {arch}"
    raise ValueError(f"unknown architecture {arch!r}: expected one of {', '.join(ARCHITECTURES)}")


def _load_safetensors(path: Path, arch: str | None) -> tuple[nn.Module, str]:
    state = read_safetensors(path)
    for key, value in state.items():
        if not value.is_floating_point() and not key.endswith("num_batches_tracked"):
            raise ValueError(f"MODEL {path}: tensor {key!r} is {value.dtype}, expected floating point weights")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"MODEL {path}: tensor {key!r} holds NaN or infinite values")
    model, described = _architecture(arch, state)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise ValueError(f"MODEL {path} does not fit --arch {arch}: {' '.join(lines[1:3] or lines)[:200]}") from None
    return model, described


def _load_parts(spec: str) -> tuple[nn.Module, str]:
    module_name, function_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # ImportError, or whatever the module raises on import
        raise ValueError(f"MODEL {spec}: cannot import module {module_name} ({error})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"MODEL {spec}: {module_name} has no function {function_name}")
    try:
        model = function()
    except Exception as error:  # the user's own code: whatever it raises becomes the one line
        raise ValueError(f"MODEL {spec}: {function_name}() failed: {type(error).__name__}: {error}") from error
    if not isinstance(model, nn.Module):
        raise TypeError(f"MODEL {spec}: {function_name}() returned a {type(model).__name__}, expected an nn.Module "
                        "(e.g. lie_cam.models.from_parts(features, head, preprocess))")
    return model, f"in parts ({spec})"


def load_audited(source: str, arch: str | None = None) -> tuple[nn.Module, str]:
    """(model in eval mode, how it was read) from a safetensors file (+ `arch`), an ONNX file or a
    module:function spec; see the module docstring. Errors name MODEL and what was expected."""
    if arch is not None and arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}: expected one of {', '.join(ARCHITECTURES)}")
    kind = describe_source(source)
    if arch is not None and kind != "safetensors":
        raise ValueError(f"--arch {arch} describes a safetensors state_dict; MODEL {source} is "
                         f"{'an ONNX graph' if kind == 'onnx' else 'a model in parts'}, which carries its architecture")
    if kind == "parts":
        model, described = _load_parts(source)
    elif kind == "onnx":
        model, described = load_onnx(source), "onnx"
    else:
        model, described = _load_safetensors(Path(source), arch)
    return model.eval(), described
