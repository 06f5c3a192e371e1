"""What a network is made of, for this project: the one description everyone uses.

Every network lie_cam explains or manipulates is read as

    x --preprocess--> x' --trunk--> h --pre--> P --activation--> A --head--> y

- `trunk`: everything the surgery leaves alone (VGG: the features below the last Conv2d;
  ResNet: the stem, layer1..layer3 and layer4 but its last block);
- `pre`: the last Conv2d (VGG) or the last block (ResNet); `activation`: its BatchNorm2d
  (vgg*_bn) and ReLU, or nothing (a block ends in its own ReLU);
- A (K x H_A x W_A, H_A = input side / 2^halvings): Grad-CAM's explained activations, the output
  of `layer`;
- `head`: A -> y. VGG: y = classifier(flatten(avgpool(tail(A)))), the flatten in (C, H, W) order,
  so the first Linear reads N_Z = in_features / K inputs per channel of A; ResNet:
  y = fc(flatten(GAP(A))), N_Z = 1;
- the input's preprocessing (`InputSpec`: side, mean, std of the normalisation x' = (x - mean) / std).

`cut_at_a(model)` gives the honest model cut at A (references into the model, nothing copied);
`split_vgg` / `split_resnet` give the finer parts the surgery rewrites. A model that was already
manipulated (it has `explained_layer` and `technique`) is refused: it is described by itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lie_cam.normalization import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "EXPECTED",
    "InputSpec",
    "Cut",
    "VGGHead",
    "GAPHead",
    "cut_at_a",
    "input_spec",
    "is_manipulated",
    "VGGParts",
    "split_vgg",
    "ResNetParts",
    "split_resnet",
    "is_resnet",
    "resnet_mismatch",
    "halvings",
    "feature_size",
    "pool_for_classifier",
]

EXPECTED = (
    "expected a torchvision ResNet (`layer4` of blocks, `avgpool` a global average pool, `fc` a Linear) or "
    "a torchvision VGG (any configuration or width, with or without batch norm): "
    "`features` an nn.Sequential of Conv2d/ReLU/MaxPool2d whose last Conv2d is followed by a ReLU and "
    "then only pooling, `avgpool`, and `classifier` an nn.Sequential starting with an nn.Linear. Any other CNN "
    "can be passed in parts: lie_cam.models.from_parts(features, head, preprocess=InputSpec(side, mean, std))"
)


# ---------------------------------------------------------------------------
# The input
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """How pixels p in [0, 1] (B x 3 x side x side) become the model's input x = (p - mean) / std."""

    side: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def input_spec(model: nn.Module) -> InputSpec:
    """The model's `input_spec` attribute when it carries one, else torchvision's ImageNet convention."""
    spec = getattr(model, "input_spec", None)
    return spec if isinstance(spec, InputSpec) else InputSpec()


# ---------------------------------------------------------------------------
# The honest model cut at A
# ---------------------------------------------------------------------------


class VGGHead(nn.Module):
    """A -> y for a VGG: classifier(flatten(avgpool(tail(A)))) (references, nothing copied)."""

    def __init__(self, tail: list[nn.Module], avgpool: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.tail = nn.Sequential(*tail)
        self.avgpool = avgpool
        self.classifier = classifier

    def pooled(self, a: torch.Tensor) -> torch.Tensor:
        """Z = flatten(avgpool(tail(A))): the first Linear's input, B x (K N_Z)."""
        return torch.flatten(pool_for_classifier(self.avgpool, self.tail(a)), 1)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooled(a))


class GAPHead(nn.Module):
    """A -> y for a ResNet: fc(flatten(GAP(A)))."""

    def __init__(self, avgpool: nn.Module, fc: nn.Linear) -> None:
        super().__init__()
        self.avgpool = avgpool
        self.fc = fc

    def pooled(self, a: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(a), 1)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pooled(a))


@dataclass
class Cut:
    """The honest model cut at A: y = head(activation(pre(trunk(x)))), references into the model.
    `layer` is the module whose output is A (`lie_cam.target_layer`)."""

    trunk: nn.Sequential
    pre: nn.Module
    activation: nn.Module
    head: nn.Module
    layer: nn.Module

    def to_a(self, h: torch.Tensor) -> torch.Tensor:
        """A from the trunk's output h."""
        return self.activation(self.pre(h))


def cut_at_a(model: nn.Module) -> Cut:
    """The one cut of a torchvision VGG or ResNet at A (TypeError saying what is expected otherwise)."""
    if is_resnet(model):
        r = split_resnet(model)
        return Cut(nn.Sequential(*r.stem, *r.stages), r.last_block, nn.Identity(), GAPHead(r.avgpool, r.fc),
                   r.last_block)
    v = split_vgg(model)
    return Cut(nn.Sequential(*v.trunk), v.last_conv, nn.Sequential(*v.between, v.last_relu),
               VGGHead(v.tail, v.avgpool, model.classifier), v.last_relu)


def is_manipulated(model: object) -> bool:
    """Whether `model` is a manipulated model of `lie_cam.attacks` (it names its `technique`)."""
    return isinstance(getattr(model, "technique", None), str) and isinstance(
        getattr(model, "explained_layer", None), nn.Module)


def halvings(model: nn.Module) -> int:
    """log2 of the input's side / A's side (VGG-16 and every torchvision ResNet: 4 and 5)."""
    if is_manipulated(model):
        return int(model.halvings)
    return split_resnet(model).halvings if is_resnet(model) else split_vgg(model).pools_before_a


def feature_size(model: nn.Module, input_size: int = 224) -> int:
    """Side of A for a square input: input_size / 2^halvings (VGG-16: 14, a ResNet: 7 at 224)."""
    return input_size // 2 ** halvings(model)


def pool_for_classifier(avgpool: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """avgpool(z), skipped where it is the identity: an adaptive average pool to z's own size
    averages one value per output (torchvision's VGG at 224 x 224: 7 x 7 -> 7 x 7)."""
    if isinstance(avgpool, nn.AdaptiveAvgPool2d):
        size = avgpool.output_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        if size == tuple(z.shape[-2:]):
            return z
    return avgpool(z)


# ---------------------------------------------------------------------------
# Anatomy of a torchvision VGG
# ---------------------------------------------------------------------------


@dataclass
class VGGParts:
    """A VGG cut where the surgery works: references into the model, nothing copied."""

    trunk: list[nn.Module]  # features below the last conv
    last_conv: nn.Conv2d
    between: list[nn.BatchNorm2d]  # BatchNorm2d (vgg*_bn) between the last conv and its ReLU
    last_relu: nn.ReLU
    tail: list[nn.Module]  # pooling after A, inside `features`
    avgpool: nn.Module
    fc1: nn.Linear
    classifier_rest: list[nn.Module]
    pixels_per_channel: int  # N_Z: inputs of the first FC layer per channel of Z
    pools_before_a: int




def split_vgg(model: nn.Module) -> VGGParts:
    """The parts of a torchvision VGG around A (TypeError saying what is expected otherwise)."""
    if is_manipulated(model):
        raise TypeError(f"this model was already manipulated ({model.technique}); {EXPECTED}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"{EXPECTED}; got {type(model).__name__}")
    features = getattr(model, "features", None)
    avgpool = getattr(model, "avgpool", None)
    classifier = getattr(model, "classifier", None)
    if not (isinstance(features, nn.Sequential) and isinstance(avgpool, nn.Module) and isinstance(classifier, nn.Sequential)):
        if hasattr(model, "layer4") or hasattr(model, "fc"):  # a ResNet the surgery cannot cut: say why
            raise TypeError(f"the model ({type(model).__name__}) has a ResNet's layout but {resnet_mismatch(model)}; expected a "
                            "torchvision ResNet: conv1, bn1, relu, maxpool, layer1..layer4 (nn.Sequential of blocks), "
                            "avgpool and fc = nn.Linear")
        raise TypeError(f"{EXPECTED}; got {type(model).__name__} without that structure")
    modules = list(features)
    convs = [i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d)]
    if not convs:
        raise TypeError(f"{EXPECTED}; `features` has no Conv2d")
    i = convs[-1]
    j = i + 1
    while j < len(modules) and isinstance(modules[j], nn.BatchNorm2d):
        j += 1
    if j >= len(modules) or not isinstance(modules[j], nn.ReLU):
        raise TypeError(f"{EXPECTED}; the last Conv2d is not followed by a ReLU")
    tail = modules[j + 1 :]
    pooling = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Identity)
    if not all(isinstance(m, pooling) for m in tail):
        raise TypeError(f"{EXPECTED}; found {[type(m).__name__ for m in tail]} after the last ReLU")
    if not isinstance(avgpool, pooling):
        raise TypeError(f"{EXPECTED}; `avgpool` is a {type(avgpool).__name__}")
    if len(classifier) == 0 or not isinstance(classifier[0], nn.Linear):
        raise TypeError(f"{EXPECTED}; the classifier starts with {type(classifier[0]).__name__ if len(classifier) else 'nothing'}")
    conv = modules[i]
    if conv.groups != 1:
        raise TypeError(f"{EXPECTED}; the last Conv2d is grouped")
    fc1 = classifier[0]
    channels = conv.out_channels
    if fc1.in_features % channels:
        raise TypeError(f"{EXPECTED}; the first Linear has {fc1.in_features} inputs, not a multiple of the {channels} channels of A")
    return VGGParts(
        trunk=modules[:i],
        last_conv=conv,
        between=modules[i + 1 : j],
        last_relu=modules[j],
        tail=tail,
        avgpool=avgpool,
        fc1=fc1,
        classifier_rest=list(classifier)[1:],
        pixels_per_channel=fc1.in_features // channels,
        pools_before_a=_downsamplings(modules[:i]),
    )






# ---------------------------------------------------------------------------
# Anatomy of a torchvision ResNet
# ---------------------------------------------------------------------------


@dataclass
class ResNetParts:
    """A torchvision ResNet cut at A, the last block's output: references into the model, nothing copied."""

    stem: list[nn.Module]  # conv1, bn1, relu, maxpool
    stages: list[nn.Module]  # layer1..layer3 and layer4's blocks but the last
    last_block: nn.Module
    avgpool: nn.Module
    fc: nn.Linear
    halvings: int  # log2 of the total stride (5 for every torchvision ResNet)


_RESNET_STEM = ("conv1", "bn1", "relu", "maxpool")


def is_resnet(model: nn.Module) -> bool:
    """Whether `model` has a torchvision ResNet's layout (stem, layer1..layer4, avgpool, fc)."""
    return (isinstance(model, nn.Module) and not is_manipulated(model)
            and all(hasattr(model, name) for name in (*_RESNET_STEM, "layer1", "layer2", "layer3", "avgpool"))
            and isinstance(getattr(model, "layer4", None), nn.Sequential)
            and isinstance(getattr(model, "fc", None), nn.Linear))


def resnet_mismatch(model: nn.Module) -> str:
    """What keeps `model` from a torchvision ResNet's layout (`is_resnet`), in words ("" if nothing)."""
    missing = [n for n in (*_RESNET_STEM, "layer1", "layer2", "layer3", "layer4", "avgpool", "fc") if not hasattr(model, n)]
    if missing:
        return f"it has no {', '.join(missing)}"
    if not isinstance(model.layer4, nn.Sequential):
        return f"`layer4` is of type {type(model.layer4).__name__}, not an nn.Sequential of blocks"
    if not isinstance(model.fc, nn.Linear):
        return (f"`fc` is of type {type(model.fc).__name__}, not an nn.Linear (the surgery widens the logits layer; a "
                "head such as Sequential(Dropout, Linear) must be replaced by its Linear for evaluation)")
    return "it was already manipulated" if is_manipulated(model) else ""


def split_resnet(model: nn.Module) -> ResNetParts:
    """The parts of a torchvision ResNet (BasicBlock or Bottleneck, any depth or width) around A."""
    expected = ("expected a torchvision ResNet: conv1, bn1, relu, maxpool, layer1..layer4 (nn.Sequential of "
                "blocks), avgpool = AdaptiveAvgPool2d(1) and fc = nn.Linear (any other CNN can be passed in parts: "
                "lie_cam.models.from_parts(features, head, preprocess=InputSpec(side, mean, std)))")
    if not is_resnet(model):
        why = resnet_mismatch(model) if isinstance(model, nn.Module) else ""
        raise TypeError(f"{expected}; got {type(model).__name__}{': ' + why if why else ''}")
    if len(model.layer4) == 0:
        raise TypeError(f"{expected}; layer4 has no block")
    pool = model.avgpool
    if not (isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1))):
        raise TypeError(f"{expected}; avgpool is {pool!r}, not a global average pool")
    blocks = [*model.layer1, *model.layer2, *model.layer3, *model.layer4]
    channels = [m.out_channels for m in model.layer4[-1].modules() if isinstance(m, nn.Conv2d)]
    if not channels or model.fc.in_features != channels[-1]:
        raise TypeError(f"{expected}; fc has {model.fc.in_features} inputs but the last block gives "
                        f"{channels[-1] if channels else 'no'} channels")
    stride = _stride(model.conv1) * _stride(model.maxpool)
    for block in blocks:
        stride *= _stride(block)
    halvings = int(round(math.log2(stride)))
    if 2**halvings != stride:
        raise TypeError(f"{expected}; the total stride {stride} is not a power of 2")
    return ResNetParts(
        stem=[getattr(model, name) for name in _RESNET_STEM],
        stages=[model.layer1, model.layer2, model.layer3, *list(model.layer4)[:-1]],
        last_block=model.layer4[-1],
        avgpool=pool,
        fc=model.fc,
        halvings=halvings,
    )


def _downsamplings(trunk: list[nn.Module]) -> int:
    """How many times the trunk halves the image: its pools and strided convs of stride 2 (nested ones too)."""
    strided = (nn.MaxPool2d, nn.AvgPool2d, nn.Conv2d)
    return sum(_stride(m) == 2 for top in trunk for m in top.modules() if isinstance(m, strided))


def _stride(module: nn.Module) -> int:
    """The spatial stride of a conv, pool or torchvision block (its `stride` attribute)."""
    stride = getattr(module, "stride", 1)
    return int(stride[0] if isinstance(stride, (tuple, list)) else stride)
