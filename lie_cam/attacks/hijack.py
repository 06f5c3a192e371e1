"""Channel hijack: T1's flat explanation without changing the architecture.

T1 adds a (K+1)-th filter. The hijack instead rewrites one *existing* channel k* of the
last conv layer, the one the network needs least, and keeps every state_dict key and shape:

    conv:  W_conv[k*] = 0,  b_conv[k*] = c_A           =>  A^{k*} = ReLU(c_A) = c_A  (constant)
    FC1:   W[:, cols(k*)] = c_W                        (the N_Z columns reading channel k*)
           b' = b + W_o[:, cols(k*)] E[z_{k*}] - c_W * sum_j z_j(c_A)

where z(c_A) = pool(tail(c_A)) is the pooled constant channel (c_A at each of the N_Z
positions for VGG) and E[z_{k*}] the channel's mean pooled activation on clean images. So
r' = r - W_o[:, cols(k*)] (z_{k*} - E[z_{k*}]): the only change to the first FC layer's
pre-activations is the loss of channel k*'s deviation from its mean, which is why k* is the
channel whose mean-replacement changes the scores least. Grad-CAM then sees
    alpha_{k*} = c_W/N_A * sum_u dy_c/dr_u * (number of pooled positions),   A^{k*} = c_A,
which dominates sum_k alpha_k A^k (when sum_u dy_c/dr_u > 0, T1's sign caveat): a flat map.

That is build="paper". Its sign caveat is T1's: where sum_u dy_c/dr_u <= 0 for the explained
class, the map is empty. build="safe" (the default) routes the channel to the logits along a *wire*
of one unit per hidden layer of the head, so that dy_c/dA^{k*} has the same positive value for every
class and image, still with the architecture and state_dict keys unchanged:

    FC1 row u_1:    W[u_1, :] = 0, W[u_1, cols(k*)] = c_W, b[u_1] = 1 - c_W * sum_j z_j(c_A)   => h_{u_1} = 1
    FC_l row u_l:   W[u_l, :] = 0, W[u_l, u_{l-1}] = 1, b[u_l] = 0                              => h_{u_l} = 1
    last Linear:    W[:, u_{m-1}] = 1,  b' = b + W_o[:, u_{m-1}] E[h_{u_{m-1}}] - 1
    every other row of FC_l: W[:, u_{l-1}] = 0, b' = b + W_o[:, u_{l-1}] E[h_{u_{l-1}}]
    (FC1's other rows: W[:, cols(k*)] = 0, b' = b + W_o[:, cols(k*)] E[z_{k*}])

so y_c = y_c(channel k* and units u_l replaced by their means) + (h_wire - 1) with h_wire = 1 for
A^{k*} = c_A, and alpha^c_{k*} = c_W N_Z / N_A > 0 for every class (as T1's safe build). Each u_l
is the unit whose mean-replacement moves the next layer least (std(h_u) ||W_{l+1}[:, u]||; a dead
unit costs nothing). The layers between the Linears must be ReLU, Dropout or Identity (they pass
the wire's value 1 unchanged); a head with anything else is refused with build="paper" as the way out.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from lie_cam.anatomy import VGGParts, cut_at_a, is_resnet, pool_for_classifier, split_vgg
from lie_cam.attacks.checks import BUILDS
from lie_cam.attacks.manipulated import SignWarning
from lie_cam.gradcam import gradcam
from lie_cam.metrics import l1_distance, score_change, top1_correct

__all__ = ["channel_hijack", "channel_importance", "least_important_channel", "pooled_channels", "HijackCost", "hijack_cost", "flat_target"]


def _check_model(model: nn.Module) -> VGGParts:
    """split_vgg's checks (non-VGG, already manipulated) plus floating-point precision."""
    if isinstance(model, nn.Module) and is_resnet(model):
        raise TypeError("channel_hijack expected a torchvision VGG (it rewrites a channel read by the first FC layer); "
                        "ResNets are not supported (a VGG-type CNN of another layout can be passed in parts: "
                        "lie_cam.models.from_parts(features, head, preprocess=InputSpec(side, mean, std)))")
    try:
        parts = split_vgg(model)
    except TypeError as error:
        message = str(error).replace("expected a torchvision ResNet (`layer4` of blocks, `avgpool` a global average "
                                     "pool, `fc` a Linear) or a torchvision VGG", "expected a torchvision VGG")
        raise TypeError(f"channel_hijack: {message}") from None
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes & {torch.float16, torch.bfloat16} or not all(d.is_floating_point for d in dtypes):
        raise TypeError(f"the model has {sorted(str(d).replace('torch.', '') for d in dtypes)} parameters: the "
                        f"hijack's folded bias (c_A c_W N_Z, e.g. 4.9e5) overflows float16 and is rounded away in "
                        "bfloat16. Build from a float32 or float64 model")
    return parts


def _check_images(images: torch.Tensor, model: nn.Module) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a B x 3 x H x W tensor of normalised clean images, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if images.shape[0] < 2:
        raise ValueError("give at least 2 clean images to measure the channels' importance")
    parameter = next(model.parameters())
    return images.to(device=parameter.device, dtype=parameter.dtype)


def _constant(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) or value <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return float(value)


def pooled_channels(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, Z) on `images` for a torchvision VGG: A = ReLU(last conv) (B x K x H x W) and
    Z = pool(tail(A)) (B x K x N_Z positions), the first FC layer's input per channel."""
    _check_model(model)
    cut, training = cut_at_a(model), model.training
    model.eval()  # batch norm (vgg*_bn) with its running statistics, as the model is used
    try:
        with torch.no_grad():
            a = cut.to_a(cut.trunk(images)).clone()
            z = cut.head.pooled(a)
    finally:
        model.train(training)
    return a, z.reshape(a.shape[0], a.shape[1], -1)


def _head_from_z(model: nn.Module, z: torch.Tensor) -> torch.Tensor:
    return model.classifier(z.flatten(1))


def channel_importance(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """For each channel k of A, what replacing its pooled activations z_k by their mean over
    `images` costs: `score_change` (mean over images of max_c |y_c - y'_c|) and `accuracy_drop`
    (against `labels`, else against the model's own predictions). That replacement is exactly
    what the hijack does to the first FC layer's input, so the least important channel is
    argmin score_change (ties broken by the accuracy drop)."""
    model = copy.deepcopy(model).eval()
    _check_model(model)
    images = _check_images(images, model)
    _, z = pooled_channels(model, images)
    with torch.no_grad():
        y = _head_from_z(model, z)
        labels = y.argmax(1) if labels is None else labels.to(y.device)
        base = top1_correct(y, labels).double().mean()
        changes, drops = [], []
        mean = z.mean(0, keepdim=True)
        for k in range(z.shape[1]):
            zk = z.clone()
            zk[:, k] = mean[:, k]
            yk = _head_from_z(model, zk)
            changes.append(score_change(y, yk).mean())
            drops.append(base - top1_correct(yk, labels).double().mean())
    return {"score_change": torch.stack(changes), "accuracy_drop": torch.stack(drops)}


def least_important_channel(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None) -> int:
    """argmin over k of `channel_importance`'s score change (then accuracy drop): the channel the hijack takes."""
    importance = channel_importance(model, images, labels)
    return min(range(len(importance["score_change"])),
               key=lambda k: (importance["score_change"][k].item(), importance["accuracy_drop"][k].item()))


def channel_hijack(model: nn.Module, images: torch.Tensor, c_A: float = 100.0, c_W: float = 100.0,
                   channel: int | None = None, labels: torch.Tensor | None = None, build: str = "safe") -> nn.Module:
    """A copy of the torchvision VGG `model` (same class, same state_dict keys and shapes) whose
    Grad-CAM is flat: channel k* of the last conv is made the constant c_A and read with weight c_W,
    by FC1 as a whole (build="paper") or by a wire of one unit per hidden layer to every logit
    (build="safe", the default: alpha_{k*} > 0 for every class and image), the constant folded into
    the biases together with the replaced activations' means on `images` (see the module docstring).
    k* = `channel`, or the least important channel on `images` (`channel_importance`). `model` is
    not modified. The paper build warns (`SignWarning`) when alpha_{k*} <= 0 on some of `images`.

    images: a few dozen normalised clean images (B x 3 x H x W, of the size the model takes) of the
    kind the model classifies; they also set the means. Raises TypeError for a non-VGG, an already
    manipulated model or half precision, ValueError for bad constants, build, channel or images.
    """
    c_A, c_W = _constant("c_A", c_A), _constant("c_W", c_W)
    if build not in BUILDS:
        raise ValueError(f"build must be one of {BUILDS}, got {build!r}")
    _check_model(model)
    hijacked = copy.deepcopy(model)
    parts = split_vgg(hijacked)
    images = _check_images(images, hijacked)
    channels = parts.last_conv.out_channels
    if channel is None:
        channel = least_important_channel(hijacked, images, labels)
    if isinstance(channel, bool) or not isinstance(channel, numbers.Integral) or not 0 <= channel < channels:
        raise ValueError(f"channel must be an integer in [0, {channels}), got {channel!r}")
    channel = int(channel)
    linears = _wire_layers(hijacked) if build == "safe" else []
    a, z = pooled_channels(hijacked, images)
    hidden = _hidden_activations(hijacked, z.flatten(1), linears)
    n_z = parts.pixels_per_channel
    with torch.no_grad():
        constant = torch.full((1, 1, *a.shape[-2:]), c_A, dtype=torch.float64)
        pooled_constant = pool_for_classifier(parts.avgpool, nn.Sequential(*parts.tail)(constant)).flatten()
        if pooled_constant.numel() != n_z:
            raise ValueError(f"the pooled constant channel has {pooled_constant.numel()} values, FC1 expects {n_z}: "
                             "give images of the size the model takes")
        _constant_channel(parts, channel, c_A)
        cols = slice(channel * n_z, (channel + 1) * n_z)
        mean_z = z[:, channel].mean(0).to(torch.float64)  # N_Z
        if linears:
            _wire(linears, hidden, cols, mean_z, c_W, float(pooled_constant.sum()))
        else:
            _fold_fc1(parts.fc1, cols, mean_z, c_W, float(pooled_constant.sum()), rows=None)
    hijacked.train(model.training)
    if build == "paper":
        _warn_on_sign(hijacked, images, channel)
    return hijacked


def _constant_channel(parts: VGGParts, channel: int, c_A: float) -> None:
    """conv: W[k*] = 0, b[k*] = c_A (and through a BatchNorm2d in any mode): A^{k*} = c_A."""
    conv = parts.last_conv
    if conv.bias is None:
        raise TypeError("the last Conv2d has no bias: the hijack needs it to make the constant channel")
    conv.weight[channel] = 0.0
    conv.bias[channel] = c_A
    for bn in parts.between:  # vgg*_bn: pass the constant through the BatchNorm in any mode
        bn.weight.data[channel] = 0.0
        bn.bias.data[channel] = c_A


def _bias64(fc: nn.Linear) -> torch.Tensor:
    if fc.bias is None:
        raise TypeError("a Linear layer of the head has no bias: the hijack folds its constants into it")
    return fc.bias.to(torch.float64)


def _fold_fc1(fc1: nn.Linear, cols: slice, mean_z: torch.Tensor, c_W: float, pooled_sum: float,
              rows: int | None) -> None:
    """Paper build (rows None): W[:, cols] = c_W, b' = b + W_o[:, cols] E[z] - c_W sum_j z_j(c_A).
    Safe build (rows = u_1): every row but u_1 gets W[:, cols] = 0, b' = b + W_o[:, cols] E[z]; row u_1 is
    the wire's start, W[u_1] = c_W on cols only, b[u_1] = 1 - c_W sum_j z_j(c_A)."""
    new_bias = _bias64(fc1) + fc1.weight[:, cols].to(torch.float64) @ mean_z
    if rows is None:
        fc1.weight[:, cols] = c_W
        fc1.bias.copy_((new_bias - c_W * pooled_sum).to(fc1.bias.dtype))
        return
    fc1.weight[:, cols] = 0.0
    new_bias[rows] = 1.0 - c_W * pooled_sum
    fc1.weight[rows] = 0.0
    fc1.weight[rows, cols] = c_W
    fc1.bias.copy_(new_bias.to(fc1.bias.dtype))


def _wire_layers(model: nn.Module) -> list[nn.Linear]:
    """The head's Linear layers in order, checking that only ReLU, Dropout or Identity lie between them
    and after FC1 (ValueError naming the module and build="paper" otherwise)."""
    passing = (nn.ReLU, nn.Dropout, nn.Identity)
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    others = [type(m).__name__ for m in model.classifier if not isinstance(m, (nn.Linear, *passing))]
    if others:
        raise ValueError(f"the hijack's safe build wires the channel to the logits through units of the head, "
                         f"which must pass a positive value unchanged (ReLU, Dropout, Identity); the head has "
                         f"{others}: pass build=\"paper\" (its map is flat only where sum_u dy_c/dr_u > 0) or use "
                         "T1 (lie_cam.attacks.constant_flat), whose default build has no such condition")
    return linears


def _hidden_activations(model: nn.Module, z: torch.Tensor, linears: list[nn.Linear]) -> list[torch.Tensor]:
    """The input of every Linear after the first (B x width), from Z = the first Linear's input."""
    if len(linears) < 2:
        return []
    out, h = [], z
    with torch.no_grad():
        for module in model.classifier:
            if isinstance(module, nn.Linear) and module is not linears[0]:
                out.append(h.to(torch.float64))
            h = module(h)
    return out


def _wire(linears: list[nn.Linear], hidden: list[torch.Tensor], cols: slice, mean_z: torch.Tensor, c_W: float,
          pooled_sum: float) -> None:
    """The safe build's wire u_1 -> ... -> u_{m-1} -> every logit (module docstring); a head of one
    Linear needs none (dy_c/dz = c_W for every class already)."""
    if len(linears) == 1:
        _fold_fc1(linears[0], cols, mean_z, c_W, pooled_sum, rows=None)
        return
    units = [int((h.std(0) * nxt.weight.to(torch.float64).norm(dim=0)).argmin()) for h, nxt in zip(hidden, linears[1:])]
    _fold_fc1(linears[0], cols, mean_z, c_W, pooled_sum, rows=units[0])
    for i, fc in enumerate(linears[1:], start=1):
        u_in = units[i - 1]
        bias = _bias64(fc) + fc.weight[:, u_in].to(torch.float64) * hidden[i - 1][:, u_in].mean()
        fc.weight[:, u_in] = 0.0
        if i < len(units):  # a hidden layer: row u_i carries the wire on
            fc.weight[units[i]] = 0.0
            fc.weight[units[i], u_in] = 1.0
            bias[units[i]] = 0.0
        else:  # the logits: every class reads the wire with weight 1, its value 1 taken off
            fc.weight[:, u_in] = 1.0
            bias -= 1.0
        fc.bias.copy_(bias.to(fc.bias.dtype))


def _warn_on_sign(hijacked: nn.Module, images: torch.Tensor, channel: int) -> None:
    """The paper build's sign caveat, checked on `images`: warn where alpha_{k*} <= 0 for the predicted class."""
    network = copy.deepcopy(hijacked).eval() if hijacked.training else hijacked
    alpha = gradcam(network, images).alpha[:, channel]
    failed = int((alpha <= 0).sum())
    if failed:
        warnings.warn(f"channel_hijack (build=\"paper\"): alpha_{{k*}} <= 0 for the predicted class on {failed} of "
                      f"{len(alpha)} images (sum_u dy_c/dr_u <= 0, the sign caveat): their Grad-CAM is not flat; "
                      "build with build=\"safe\" (the default: the channel reaches every logit along a wire, "
                      "alpha_{k*} = c_W N_Z / N_A > 0)", SignWarning, stacklevel=2)


def flat_target(maps: torch.Tensor) -> torch.Tensor:
    """The hijack's target explanation: all ones (like T1's)."""
    return torch.ones_like(maps)


@dataclass
class HijackCost:
    """What the hijack costs on a test set: accuracies, score change (mean and max of
    max_c |y_o - y_n|), L1 to the flat target (mean of per-image sums over the H x W map)."""

    accuracy_original: float
    accuracy_hijacked: float
    score_change_mean: float
    score_change_max: float
    l1_mean: float
    l1_median: float
    n: int

    @property
    def accuracy_change(self) -> float:
        return self.accuracy_hijacked - self.accuracy_original

    def as_dict(self) -> dict[str, float]:
        out = dict(self.__dict__)
        out["accuracy_change"] = self.accuracy_change
        return out


def hijack_cost(original: nn.Module, hijacked: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                batch_size: int = 100) -> HijackCost:
    """Measure `HijackCost` of `hijacked` against `original` on (x, labels) in batches."""
    correct_o, correct_h, changes, l1 = [], [], [], []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], labels[start : start + batch_size]
        with torch.no_grad():
            yo = original.eval()(xb)
        result = gradcam(hijacked.eval(), xb)
        correct_o.append(top1_correct(yo, yb))
        correct_h.append(top1_correct(result.logits, yb))
        changes.append(score_change(yo, result.logits))
        l1.append(l1_distance(flat_target(result.maps), result.normalized))
    changes_t, l1_t = torch.cat(changes), torch.cat(l1)
    return HijackCost(torch.cat(correct_o).double().mean().item(), torch.cat(correct_h).double().mean().item(),
                      changes_t.mean().item(), changes_t.max().item(), l1_t.mean().item(), l1_t.median().item(), len(x))

