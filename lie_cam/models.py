"""Models: the embedded compact VGG-16 that ships in `data/`, and the real torchvision VGG-16.

The compact model is torchvision's VGG class with configuration D (13 conv layers,
the same layer structure and indices as VGG-16) at a fraction of the width, with a
narrow classifier. Everything loads without pickle: safetensors for the shipped file,
`torch.load(weights_only=True)` for user checkpoints; `load_model_file` is the one loader for a model
file of unknown origin (a VGG state_dict whose layout is checked before anything is built).
A network of another layout comes in by `load_onnx` (a VGG-type ONNX graph, `lie_cam.onnx_import`) or
`from_parts(features, head, preprocess)` (any CNN whose head starts with an affine map of A, `lie_cam.parts`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from lie_cam.compat import import_torchvision
from lie_cam.onnx_import import load_onnx
from lie_cam.parts import PartsModel, from_parts
from lie_cam.resources import data_dir

__all__ = [
    "DATA_DIR",
    "EMBEDDED_WEIGHTS",
    "EMBEDDED_CLASSES",
    "compact_vgg16",
    "load_embedded",
    "embedded_metadata",
    "load_vgg16",
    "sha256_file",
    "read_safetensors",
    "read_state_dict",
    "read_recipe",
    "RECIPE_KEYS",
    "try_gpu",
    "fold_batchnorm",
    "RESNET_WEIGHTS",
    "compact_resnet",
    "load_embedded_resnet",
    "ModelLike",
    "vgg_state_dict_problems",
    "vgg_from_state_dict",
    "load_model_file",
    "as_model",
    "load_onnx",
    "from_parts",
    "PartsModel",
]

DATA_DIR = data_dir()  # the shipped files, for editable and regular installs alike
EMBEDDED_WEIGHTS = DATA_DIR / "compact_vgg16.safetensors"
EMBEDDED_RECIPE = DATA_DIR / "compact_vgg16.json"
EMBEDDED_CLASSES = 10
RESNET_WEIGHTS = DATA_DIR / "compact_resnet.safetensors"
RESNET_RECIPE = DATA_DIR / "compact_resnet.json"

# torchvision's configuration "D" (VGG-16): channels per conv, "M" for a 2x2 max-pool.
VGG16_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def compact_vgg16(width: float = 0.125, num_classes: int = EMBEDDED_CLASSES, hidden: int = 256, dropout: float = 0.5,
                  batch_norm: bool = False) -> nn.Module:
    """torchvision VGG, configuration D, with every conv `width` times as wide and a
    Linear(C*7*7, hidden) - ReLU - Dropout - Linear(hidden, hidden) - ReLU - Dropout - Linear(hidden, classes) head.
    batch_norm=True gives the vgg16_bn layout (used for training, then `fold_batchnorm`)."""
    tv = import_torchvision()
    from torchvision.models.vgg import VGG, make_layers

    if not 0 < width <= 1:
        raise ValueError(f"width must be in (0, 1], got {width}")
    config = [v if v == "M" else max(1, round(v * width)) for v in VGG16_CONFIG]
    model = VGG(make_layers(config, batch_norm=batch_norm), num_classes=num_classes, init_weights=True)
    last = config[-2]
    model.classifier = nn.Sequential(
        nn.Linear(last * 7 * 7, hidden),
        nn.ReLU(True),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )
    for m in model.classifier:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    del tv
    return model


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of a vgg*_bn model with every Conv2d-BatchNorm2d pair (eval statistics) merged into one Conv2d:
    w' = w * g / sqrt(v + e),  b' = (b - m) * g / sqrt(v + e) + beta.  The result has the plain VGG layout."""
    import copy

    model = copy.deepcopy(model).eval()
    layers: list[nn.Module] = []
    for module in model.features:
        if isinstance(module, nn.BatchNorm2d):
            conv = layers[-1]
            if not isinstance(conv, nn.Conv2d):
                raise TypeError("expected every BatchNorm2d to follow a Conv2d")
            scale = module.weight.double() / torch.sqrt(module.running_var.double() + module.eps)
            bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True)
            with torch.no_grad():
                fused.weight.copy_((conv.weight.double() * scale[:, None, None, None]).float())
                fused.bias.copy_(((bias - module.running_mean.double()) * scale + module.bias.double()).float())
            layers[-1] = fused
        else:
            layers.append(module)
    model.features = nn.Sequential(*layers)
    return model


def try_gpu() -> torch.device:
    """The first CUDA device when there is one, else the CPU."""
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file, after checking that the file is one.

    A safetensors file is an 8-byte little-endian header length N, an N-byte JSON header,
    then raw tensor bytes; a pickle (or torch.save zip) is refused, never unpickled.
    """
    from safetensors.torch import load_file

    path = Path(path)
    expected = "expected a .safetensors weights file (an 8-byte header length, a JSON header, tensor data)"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; {expected}")
    if not path.is_file():
        raise ValueError(f"{path} is a {'directory' if path.is_dir() else 'special file'}, not a file; {expected}")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if head[:2] == b"PK" or head[:1] == b"\x80":
            raise ValueError(f"{path} is a pickle / torch.save file, not safetensors: it is refused, since unpickling "
                             "can run arbitrary code. Convert it with safetensors.torch.save_file(state_dict, ...) "
                             "where you trust it")
        if len(head) < 8:
            raise ValueError(f"{path} has only {size} bytes: it is truncated or empty; {expected}")
        length = int.from_bytes(head, "little")
        if length < 2 or 8 + length > size:
            raise ValueError(f"{path} is not a complete safetensors file (its header claims {length} bytes, the file has "
                             f"{size}): truncated or another format; {expected}")
        header = handle.read(length)
    try:
        meta = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{path} does not start with a JSON header: not a safetensors file; {expected}") from None
    ends = [int(v["data_offsets"][1]) for k, v in meta.items() if k != "__metadata__" and isinstance(v, dict)]
    if ends and 8 + length + max(ends) > size:
        raise ValueError(f"{path} is truncated: its header describes {8 + length + max(ends)} bytes, the file has {size}")
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors' own SafetensorError for anything left
        raise ValueError(f"{path} could not be read as safetensors ({error}); {expected}") from error


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: safetensors, or a state_dict saved with torch.save and read
    with `torch.load(weights_only=True)` (a {"state_dict": ...} wrapper is unwrapped). A file that
    needs pickle to run code is refused, not executed."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.is_dir():
        raise ValueError(f"{path} is a directory; expected a .safetensors file or a torch.save'd state_dict")
    if path.suffix == ".safetensors":
        state = read_safetensors(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle.UnpicklingError and friends
            raise ValueError(
                f"refusing to load {path}: it is not a plain weights file (torch.load with weights_only=True "
                f"failed: {error}). Checkpoints that need pickle can run arbitrary code; save a state_dict instead"
            ) from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state_dict of tensors")
    return state


def _check_weights(state: dict[str, torch.Tensor], source: object, expected: dict[str, torch.Tensor] | None = None) -> None:
    """ValueError naming `source` and the tensor when a weight is not floating point (integer weights
    would be cast silently by load_state_dict) or holds NaN or inf. `expected`: the model's own
    state_dict, whose non-floating entries (BatchNorm's num_batches_tracked) may stay integers."""
    for key, value in state.items():
        wanted = expected.get(key) if expected is not None else None
        if wanted is not None and not wanted.is_floating_point():
            continue
        if not value.is_floating_point():
            if expected is None and key.endswith("num_batches_tracked"):
                continue
            raise ValueError(f"{source}: tensor {key!r} is {str(value.dtype).replace('torch.', '')}, expected floating "
                             "point weights (integer weights are refused, not cast)")
        bad = int((~torch.isfinite(value)).sum())
        if bad:
            raise ValueError(f"{source}: tensor {key!r} holds {bad} NaN/inf value(s): the weights file is corrupted "
                             "(a model with such weights gives no finite scores)")


def _load_state(model: nn.Module, state: dict, path: Path, what: str) -> nn.Module:
    _check_weights(state, path, model.state_dict())
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = " ".join(lines[1:3] or lines)[:160]  # "size mismatch for ...", "Missing key(s) ..."
        raise ValueError(f"not a {what} state_dict: {detail} (in {path})") from None
    return model


RECIPE_KEYS = ("architecture", "training", "test", "sha256", "command")  # what `python -m lie_cam.train` writes
_ARCHITECTURE_KEYS = {"vgg": ("width", "num_classes", "hidden", "dropout"),
                      "resnet": ("arch", "width", "layers", "num_classes")}


def read_recipe(weights: str | Path, arch: str = "vgg", required: bool = False, recipe: Path | None = None) -> dict:
    """The recipe `python -m lie_cam.train` wrote beside `weights` (same name, .json; or `recipe`), or {}
    when there is none and not `required`. ValueError naming the .json when it is not JSON, has keys `train` never
    writes, or describes the other architecture ("vgg": the compact VGG-16, "resnet": the compact ResNet)."""
    recipe = Path(weights).with_suffix(".json") if recipe is None else Path(recipe)
    if not recipe.is_file():
        if required:
            raise FileNotFoundError(f"{recipe} (the recipe and sha256 written beside the weights) is missing")
        return {}
    try:
        meta = json.loads(recipe.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"the recipe {recipe} beside {Path(weights).name} is not valid JSON ({error}): repair or "
                         "remove it") from None
    if not isinstance(meta, dict):
        raise ValueError(f"the recipe {recipe} holds a {type(meta).__name__}, expected an object with keys {RECIPE_KEYS}")
    unknown = sorted(set(meta) - set(RECIPE_KEYS))
    if unknown:
        raise ValueError(f"the recipe {recipe} has unknown keys {unknown}: expected some of {list(RECIPE_KEYS)}")
    architecture = meta.get("architecture", {})
    if not isinstance(architecture, dict):
        raise ValueError(f"the recipe {recipe}: 'architecture' must be an object, got {type(architecture).__name__}")
    other = "vgg" if arch == "resnet" else "resnet"
    says = "resnet" if architecture.get("arch") == "resnet" or "layers" in architecture else "vgg"
    if says != arch:
        loader = "load_embedded_resnet" if other == "resnet" else "load_embedded"
        raise ValueError(f"the recipe {recipe} describes a compact {'ResNet' if says == 'resnet' else 'VGG-16'}, "
                         f"not a {'ResNet' if arch == 'resnet' else 'VGG-16'}: use --arch {other} ({loader})")
    unknown = sorted(set(architecture) - set(_ARCHITECTURE_KEYS[arch]))
    if unknown:
        raise ValueError(f"the recipe {recipe}: 'architecture' has unknown keys {unknown}, expected some of "
                         f"{list(_ARCHITECTURE_KEYS[arch])}")
    return meta


def embedded_metadata() -> dict:
    """The shipped model's recipe: architecture arguments, training settings, sha256, test metrics."""
    if not EMBEDDED_RECIPE.exists():
        raise FileNotFoundError(f"{EMBEDDED_RECIPE} is missing: lie_cam's data files did not come with this install "
                                "(reinstall with pip install ., or retrain with `python -m lie_cam.train`)")
    return json.loads(EMBEDDED_RECIPE.read_text())


def load_embedded(path: str | Path | None = None, verify: bool = True) -> nn.Module:
    """The compact VGG-16 trained on `lie_cam.data.synthetic`, in eval mode, from safetensors."""
    path = Path(path) if path is not None else EMBEDDED_WEIGHTS
    if not path.exists():
        raise FileNotFoundError(f"no embedded model at {path}: it ships with the package (lie_cam.data_files); "
                                "reinstall it, or retrain with `python -m lie_cam.train`")
    shipped = path.resolve() == EMBEDDED_WEIGHTS.resolve()
    if shipped and not EMBEDDED_RECIPE.exists():
        embedded_metadata()  # raises, saying how to get the data files back
    # the shipped recipe, or the one `python -m lie_cam.train --out FILE` wrote beside a retrained model
    meta = read_recipe(path, "vgg", required=shipped, recipe=EMBEDDED_RECIPE if shipped else None)
    arch = meta.get("architecture", {"width": 0.125, "num_classes": EMBEDDED_CLASSES, "hidden": 256})
    state = read_safetensors(path)
    if verify and meta.get("sha256") and sha256_file(path) != meta["sha256"]:
        raise ValueError(f"{path} does not match the sha256 recorded in its recipe: the file was changed or corrupted")
    return _load_state(compact_vgg16(**arch), state, path, "compact VGG-16").eval()



def load_vgg16(checkpoint: str | Path | None = None, pretrained: bool = True) -> nn.Module:
    """torchvision VGG-16 in eval mode: ImageNet weights (`VGG16_Weights.IMAGENET1K_V1`,
    downloaded by torchvision when online) or a local state-dict checkpoint.

    A checkpoint is read with `torch.load(weights_only=True)` (or safetensors): a file
    that needs pickle to run code is refused, not executed.
    """
    import_torchvision()
    from torchvision.models import VGG16_Weights, vgg16

    if checkpoint is None:
        if not pretrained:
            return vgg16(weights=None).eval()
        try:
            return vgg16(weights=VGG16_Weights.IMAGENET1K_V1).eval()
        except (OSError, RuntimeError) as error:  # URLError is an OSError
            raise RuntimeError(
                "could not download torchvision's VGG-16 ImageNet weights (no internet?). Download "
                f"{VGG16_Weights.IMAGENET1K_V1.url} elsewhere and pass its path as checkpoint=, "
                "or use the embedded default (lie_cam.models.load_embedded())"
            ) from error
    path = Path(checkpoint)
    state = read_state_dict(path)
    return _load_state(vgg16(weights=None), state, path, "torchvision VGG-16").eval()


def compact_resnet(width: int = 16, layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = EMBEDDED_CLASSES) -> nn.Module:
    """A torchvision `ResNet` of BasicBlocks (ResNet-18's layout for layers=(2, 2, 2, 2)) whose stages
    have width, 2 width, 4 width, 8 width channels instead of 64..512 (width=16: 1/4 of ResNet-18).
    Stem: 7x7 conv stride 2, BN, ReLU, 3x3 max-pool stride 2; head: global average pool, Linear.
    Initialised as torchvision initialises its ResNets (Kaiming normal convs, BN weight 1, bias 0)."""
    import_torchvision()
    from torchvision.models.resnet import BasicBlock, ResNet, conv1x1

    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive int (channels of the first stage), got {width!r}")
    if len(layers) != 4 or not all(isinstance(n, int) and n >= 1 for n in layers):
        raise ValueError(f"layers must be four positive ints (blocks per stage), got {layers!r}")
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)  # the class and its forward; stages replaced
    model.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    inplanes = width
    for stage, blocks in enumerate(layers):
        planes, stride = width * 2**stage, 1 if stage == 0 else 2
        downsample = None
        if stride != 1 or inplanes != planes:
            downsample = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
        stage_blocks = [BasicBlock(inplanes, planes, stride, downsample)]
        stage_blocks += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        setattr(model, f"layer{stage + 1}", nn.Sequential(*stage_blocks))
        inplanes = planes
    model.fc = nn.Linear(inplanes, num_classes)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def load_embedded_resnet(path: str | Path | None = None, verify: bool = True) -> nn.Module:
    """The compact ResNet trained on `lie_cam.data.synthetic` (`python -m lie_cam.train --arch resnet`),
    in eval mode, from safetensors, checked against the sha256 of the recipe beside it."""
    path = Path(path) if path is not None else RESNET_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"no compact ResNet at {path}: it ships with the package (lie_cam.data_files); "
                                "retrain with `python -m lie_cam.train --arch resnet`")
    recipe = path.with_suffix(".json")
    meta = read_recipe(path, "resnet", required=True)
    if verify and sha256_file(path) != meta.get("sha256"):
        raise ValueError(f"{path} does not match the sha256 recorded in {recipe.name}: the file was changed or corrupted")
    arch = dict(meta["architecture"])
    arch.pop("arch", None)
    model = compact_resnet(**{k: tuple(v) if k == "layers" else v for k, v in arch.items()})
    return _load_state(model, read_safetensors(path), path, "compact ResNet").eval()


# ---------------------------------------------------------------------------
# Model files of unknown origin (never pickle)
# ---------------------------------------------------------------------------

ModelLike = nn.Module | str | Path


def vgg_state_dict_problems(state: dict[str, torch.Tensor]) -> list[str]:
    """Deviations of a state_dict from torchvision's VGG (no batch norm) layout."""
    problems = []
    features, classifier = {}, {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) != 3 or parts[0] not in ("features", "classifier") or not parts[1].isdigit() \
                or parts[2] not in ("weight", "bias"):
            problems.append(f"unexpected key {key}")
            continue
        (features if parts[0] == "features" else classifier).setdefault(int(parts[1]), {})[parts[2]] = value
    if not features or len(classifier) != 3:
        problems.append(f"expected conv layers under features.* and 3 Linear layers under classifier.*, "
                        f"got {len(features)} and {len(classifier)}")
        return problems
    channels, previous = 3, None
    for i in sorted(features):
        layer = features[i]
        w, b = layer.get("weight"), layer.get("bias")
        if w is None or b is None or w.dim() != 4 or tuple(w.shape[2:]) != (3, 3) or b.shape != w.shape[:1]:
            problems.append(f"features.{i} is not a 3x3 Conv2d with bias")
            continue
        if w.shape[1] != channels:
            problems.append(f"features.{i} reads {w.shape[1]} channels, the previous layer gives {channels}")
        if previous is not None and i - previous not in (2, 3):
            problems.append(f"features.{i}: index gap {i - previous} after features.{previous} (expected 2 or 3)")
        channels, previous = w.shape[0], i
    if sorted(classifier) != [0, 3, 6]:
        problems.append(f"classifier Linear layers at {sorted(classifier)}, torchvision has 0, 3, 6")
    dims = []
    for i in sorted(classifier):
        w, b = classifier[i].get("weight"), classifier[i].get("bias")
        if w is None or b is None or w.dim() != 2 or b.shape != w.shape[:1]:
            problems.append(f"classifier.{i} is not a Linear with bias")
            return problems
        dims.append(tuple(w.shape))
    if dims[0][1] != channels * 49:
        problems.append(f"classifier.0 reads {dims[0][1]} inputs, not {channels} channels x 7 x 7")
    for (out_prev, _), (out, inp) in zip(dims, dims[1:]):
        if inp != out_prev:
            problems.append(f"classifier Linear reads {inp} inputs after a layer with {out_prev} outputs")
    return problems


def vgg_from_state_dict(state: dict[str, torch.Tensor]) -> nn.Module:
    """A torchvision VGG (configuration read off the conv shapes, a pool after each block whose
    index gap says so, a 3-Linear classifier) with `state` loaded, in eval mode. ValueError when the
    state_dict is not of that layout (`architecture_problems` says why)."""
    problems = vgg_state_dict_problems(state)
    if problems:
        raise ValueError("not a torchvision VGG state_dict: " + "; ".join(problems[:5]) + ". Another network: "
                         "an ONNX file with lie_cam.models.load_onnx(path), any CNN built in PyTorch with "
                         "lie_cam.models.from_parts(features, head, preprocess=InputSpec(side, mean, std))")
    import_torchvision()
    from torchvision.models.vgg import VGG, make_layers

    convs = sorted(int(k.split(".")[1]) for k in state if k.startswith("features.") and k.endswith(".weight"))
    config: list = []
    for n, i in enumerate(convs):
        config.append(state[f"features.{i}.weight"].shape[0])
        following = convs[n + 1] if n + 1 < len(convs) else None
        if following is None or following - i == 3:
            config.append("M")
    fcs = sorted(int(k.split(".")[1]) for k in state if k.startswith("classifier.") and k.endswith(".weight"))
    model = VGG(make_layers(config), num_classes=state[f"classifier.{fcs[-1]}.weight"].shape[0], init_weights=False)
    dims = [state[f"classifier.{i}.weight"].shape for i in fcs]
    model.classifier = nn.Sequential(nn.Linear(dims[0][1], dims[0][0]), nn.ReLU(True), nn.Dropout(),
                                     nn.Linear(dims[1][1], dims[1][0]), nn.ReLU(True), nn.Dropout(),
                                     nn.Linear(dims[2][1], dims[2][0]))
    model.load_state_dict(state)
    return model.eval()


def load_model_file(path: str | Path) -> nn.Module:
    """A VGG from a weights file (safetensors, or torch.load(weights_only=True)); integer or non-finite
    weights are refused, naming the file and the tensor."""
    state = read_state_dict(path)
    _check_weights(state, path)
    return vgg_from_state_dict(state)


def as_model(model: ModelLike) -> nn.Module:
    """A module as it is, or the VGG in a weights file."""
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, (str, Path)):
        return load_model_file(model)
    raise TypeError(f"expected an nn.Module or the path of a weights file, got {type(model).__name__}")
