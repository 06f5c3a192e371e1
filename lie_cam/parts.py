"""Any CNN, in parts: `from_parts(features, head, preprocess)` puts it in the form the surgery reads.

The surgery (T1-T4, the channel hijack) knows one head: y = classifier(flatten(avgpool(tail(A))))
with the flatten in (C, H, W) order, so that FC1's columns k N_Z .. (k+1) N_Z - 1 read channel k
of A. A network given in parts,

    A = features(x)                     (its last module, a ReLU after the last Conv2d, gives A)
    y = head(A) = rest(W_1 P(A) + b_1)  (P: whatever turns A into FC1's input, W_1, b_1: FC1)

is rewritten into that form. P may be any *affine* map of A (a flatten in any order, a permute,
global or local average pooling, a BatchNorm2d, ...); max-pooling at the head's start is moved into
`tail` (the surgery knows it). Since P is affine, P(A) = M vec_CHW(A) + p, so

    W_1 P(A) + b_1 = (W_1 M) vec_CHW(A) + (W_1 p + b_1)

and FC1 becomes a Linear on the CHW flatten of A with weight W_1 M and bias W_1 p + b_1. W_1 M is
computed in float64 as the vector-Jacobian products M^T w of W_1's rows w through P (exact for a
permutation: it only moves W_1's columns). P is checked to be affine on random signed inputs and
the rebuilt model is checked against features + head on a random input; anything else is refused.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lie_cam.anatomy import InputSpec

__all__ = ["PartsModel", "from_parts", "flat_modules", "HOW_TO_PASS_IN_PARTS", "ChannelAffine", "fold_affine"]

HOW_TO_PASS_IN_PARTS = (
    "any other CNN can be passed in parts: lie_cam.models.from_parts(features, head, "
    "preprocess=InputSpec(side, mean, std)), features mapping the image to A (ending with the ReLU after the "
    "last Conv2d) and head mapping A to the logits (an nn.Sequential whose first nn.Linear is FC1)")

_POOLS = (nn.MaxPool2d, nn.AdaptiveMaxPool2d)


class ChannelAffine(nn.Module):
    """z -> scale * z + shift per feature (a dense batch norm in eval mode, as ONNX graphs write it)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale + self.shift


def _affine_of(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(s, t) in float64 when `module` computes s * z + t per feature (in eval mode), else None."""
    if isinstance(module, ChannelAffine):
        return module.scale.detach().double(), module.shift.detach().double()
    if isinstance(module, nn.BatchNorm1d) and module.running_mean is not None:
        scale = torch.rsqrt(module.running_var.double() + module.eps)
        if module.weight is not None:
            scale = scale * module.weight.detach().double()
        shift = -module.running_mean.double() * scale
        return scale, shift + (module.bias.detach().double() if module.bias is not None else 0.0)
    return None


def _fold_into(linear: nn.Linear, scale: torch.Tensor, shift: torch.Tensor, after: bool) -> None:
    """linear := affine o linear (after=True: W' = diag(s) W, b' = s b + t) or linear o affine
    (W' = W diag(s), b' = b + W t), computed in float64."""
    weight = linear.weight.detach().double()
    bias = linear.bias.detach().double() if linear.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    if after:
        weight, bias = scale[:, None] * weight, scale * bias + shift
    else:
        weight, bias = weight * scale[None, :], bias + weight @ shift
    if linear.bias is None:
        linear.bias = nn.Parameter(torch.empty_like(linear.weight[:, 0]))
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)


def fold_affine(modules: list[nn.Module]) -> list[nn.Module]:
    """The modules with each per-feature affine layer (BatchNorm1d in eval mode, `ChannelAffine`) folded
    into the nn.Linear right before it, else the one right after it; one with no Linear next to it stays.
    The Linear layers are changed in place (give copies)."""
    out: list[nn.Module] = []
    pending: list[nn.Module] = []  # affine layers after a non-Linear, waiting for the next Linear
    for module in modules:
        affine = _affine_of(module)
        if affine is not None and not pending and out and isinstance(out[-1], nn.Linear):
            _fold_into(out[-1], *affine, after=True)
        elif affine is not None:
            pending.append(module)
        elif isinstance(module, nn.Linear) and pending:
            for layer in reversed(pending):
                _fold_into(module, *_affine_of(layer), after=False)
            pending = []
            out.append(module)
        else:
            out += pending + [module]
            pending = []
    return out + pending


class PartsModel(nn.Module):
    """A CNN in torchvision-VGG form: y = classifier(flatten(avgpool(features(x)), 1)), the flatten in
    (C, H, W) order, avgpool the identity; `input_spec` says how pixels in [0, 1] become x.
    `softmax_removed`: True where `load_onnx` dropped the graph's final Softmax; `source_layout`: the
    layout of the graph `load_onnx` read ("NHWC" for Keras), the model itself takes NCHW."""

    softmax_removed: bool = False
    source_layout: str = "NCHW"

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, input_spec: InputSpec) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.Identity()
        self.classifier = classifier
        self.input_spec = input_spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def flat_modules(module: nn.Module) -> list[nn.Module]:
    """The modules of nested nn.Sequentials in the order they run (any other module as one)."""
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in flat_modules(child)]
    return [module]


def _check_features(modules: list[nn.Module]) -> None:
    """features must end with Conv2d, BatchNorm2d*, ReLU (the ReLU's output is A)."""
    convs = [i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d)]
    ending = [type(m).__name__ for m in modules[-3:]]
    if not convs or not isinstance(modules[-1], nn.ReLU) or not all(
            isinstance(m, nn.BatchNorm2d) for m in modules[convs[-1] + 1:-1]):
        raise ValueError(f"from_parts: features must end with the layer Grad-CAM explains, a Conv2d followed by "
                         f"optional BatchNorm2d and an nn.ReLU (as modules of nested nn.Sequentials); its last "
                         f"modules are {ending}")


def _split_head(head: nn.Module) -> tuple[list[nn.Module], list[nn.Module], nn.Linear, list[nn.Module]]:
    """(pooling moved into the tail, the affine part P before FC1, FC1, the rest of the head)."""
    modules = flat_modules(head)
    first = next((i for i, m in enumerate(modules) if isinstance(m, nn.Linear)), None)
    if first is None:
        raise ValueError(f"from_parts: head must be an nn.Sequential containing an nn.Linear (FC1, the first layer "
                         f"of the classifier); got {type(head).__name__} with "
                         f"{[type(m).__name__ for m in modules][:6]}")
    leading = 0
    while leading < first and isinstance(modules[leading], _POOLS):
        leading += 1
    return modules[:leading], modules[leading:first], modules[first], modules[first + 1:]


def _run(modules: list[nn.Module], z: torch.Tensor) -> torch.Tensor:
    for module in modules:
        z = module(z)
    return z


def _check_affine(pre: list[nn.Module], shape: tuple[int, ...], width: int) -> torch.Tensor:
    """P(0) after checking that P maps B x shape to B x width affinely (float64, random signed inputs)."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 1, *shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        zero, pa, pb, pab = (_run(pre, t) for t in (torch.zeros_like(a), a, b, 2.5 * a - b))
    names = [type(m).__name__ for m in pre]
    if pa.dim() != 2 or pa.shape[1] != width:
        raise ValueError(f"from_parts: the head's modules before its first nn.Linear ({names}) turn A "
                         f"({'x'.join(map(str, shape))}) into shape {tuple(pa.shape[1:])}, but FC1 reads {width} "
                         "inputs")
    error = (pab - zero - 2.5 * (pa - zero) + (pb - zero)).abs().max().item()
    if error > 1e-9 * (1 + max(pa.abs().max().item(), pb.abs().max().item())):
        raise ValueError(f"from_parts: the head's modules before its first nn.Linear ({names}) are not an affine "
                         f"map of A (P(2.5a - b) != 2.5 P(a) - 1.5 P(0) - P(b) by {error:.2g}); only a flatten in "
                         "any order, a permute, average pooling or another affine map may come before FC1 (max "
                         "pooling only at the head's very start). Put anything else in features before A, or "
                         "after FC1")
    return zero[0]


def _canonical_fc1(pre: list[nn.Module], fc1: nn.Linear, shape: tuple[int, ...]) -> nn.Linear:
    """Linear(K H W, out) on the CHW flatten of A equal to fc1(P(A)): W_1 M and W_1 P(0) + b_1."""
    pre64 = [copy.deepcopy(m).double().eval() for m in pre]
    offset = _check_affine(pre64, shape, fc1.in_features)
    w1 = fc1.weight.detach().to(torch.float64)
    a = torch.zeros(1, *shape, dtype=torch.float64, requires_grad=True)
    p = _run(pre64, a)
    rows = []
    for chunk in torch.split(w1, 256):  # M^T w for each row w of W_1, 256 at a time
        (grad,) = torch.autograd.grad(p, a, grad_outputs=chunk[:, None, :], is_grads_batched=True,
                                      retain_graph=True)
        rows.append(grad.reshape(chunk.shape[0], -1))
    bias = w1 @ offset + (fc1.bias.detach().to(torch.float64) if fc1.bias is not None else 0.0)
    linear = nn.Linear(a[0].numel(), fc1.out_features, dtype=fc1.weight.dtype, device=fc1.weight.device)
    with torch.no_grad():
        linear.weight.copy_(torch.cat(rows))
        linear.bias.copy_(bias)
    return linear


def _check_spec(preprocess: InputSpec | None) -> InputSpec:
    if preprocess is None:
        return InputSpec()
    if not isinstance(preprocess, InputSpec):
        raise TypeError(f"from_parts: preprocess must be a lie_cam.anatomy.InputSpec(side, mean, std), got "
                        f"{type(preprocess).__name__}")
    return preprocess


def _verify(model: PartsModel, features: nn.Module, head: nn.Module, spec: InputSpec) -> None:
    """model(x) == head(features(x)) on a random input of the spec's size (else a ValueError)."""
    parameter = next(model.parameters())
    x = torch.randn(2, 3, spec.side, spec.side, generator=torch.Generator().manual_seed(1)).to(
        device=parameter.device, dtype=parameter.dtype)
    with torch.no_grad():
        expected, got = head(features(x)), model(x)
    scale = 1 + expected.abs().max().item()
    if got.shape != expected.shape or (got - expected).abs().max().item() > 1e-4 * scale:
        raise ValueError("from_parts: the rebuilt model does not reproduce head(features(x)) on a random input; "
                         "the head's modules before FC1 must not depend on anything but A")


def from_parts(features: nn.Module, head: nn.Module, preprocess: InputSpec | None = None) -> PartsModel:
    """A CNN from two parts, in the form T1-T4 and the channel hijack take (`PartsModel`).

    features: image x (B x 3 x side x side, normalised as `preprocess` says) -> A; an nn.Module or nested
        nn.Sequentials ending with Conv2d, optional BatchNorm2d, ReLU (the layer Grad-CAM explains).
    head: A -> logits, an nn.Sequential whose modules before its first nn.Linear (FC1) form an affine map
        P of A (a flatten in any order, a permute, average pooling; max pooling at its start).
    preprocess: how pixels p in [0, 1] become x = (p - mean) / std, and the input side (default:
        torchvision's ImageNet convention at 224).

    FC1 is rewritten to read flatten_CHW(A) with weight W_1 M and bias W_1 P(0) + b_1, and batch norms
    after it are folded into a Linear next to them (see the module docstring); the parts are copied, the ones given are left as they were. The result is in eval mode.
    ValueError (saying which part and why) for parts that cannot be put in that form.
    """
    for name, part in (("features", features), ("head", head)):
        if not isinstance(part, nn.Module):
            raise TypeError(f"from_parts: {name} must be an nn.Module, got {type(part).__name__}")
    spec = _check_spec(preprocess)
    features_copy, head_copy = copy.deepcopy(features).eval(), copy.deepcopy(head).eval()
    trunk = flat_modules(features_copy)
    _check_features(trunk)
    tail, pre, fc1, rest = _split_head(head_copy)
    parameter = next(features_copy.parameters())
    probe = torch.zeros(1, 3, spec.side, spec.side, dtype=parameter.dtype, device=parameter.device)
    with torch.no_grad():
        shape = tuple(_run(tail, features_copy(probe)).shape[1:])
    classifier = fold_affine([_canonical_fc1(pre, fc1, shape), *copy.deepcopy(rest)])  # head_copy stays as given
    classifier = [m.to(fc1.weight.dtype) if isinstance(m, ChannelAffine) else m for m in classifier]
    model = PartsModel(nn.Sequential(*trunk, *tail), nn.Sequential(*classifier), spec)
    _verify(model.eval(), features_copy, head_copy, spec)
    return model
