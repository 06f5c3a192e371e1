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

A chosen *image* needs a spatially varying A^{k*}; a zero kernel with a bias cannot give one
(the hijack is T1's construction only), so `channel_hijack` makes the flat map.
"""

from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass

import torch
from torch import nn

from lie_cam.anatomy import VGGParts, cut_at_a, is_resnet, pool_for_classifier, split_vgg
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
                   channel: int | None = None, labels: torch.Tensor | None = None) -> nn.Module:
    """A copy of the torchvision VGG `model` (same class, same state_dict keys and shapes) whose
    Grad-CAM is flat: channel k* of the last conv is made the constant c_A and read by FC1 with
    weight c_W, the constant folded into FC1's bias together with the channel's mean contribution
    on `images` (see the module docstring). k* = `channel`, or the least important channel on
    `images` (`channel_importance`). `model` is not modified.

    images: a few dozen normalised clean images (B x 3 x H x W) of the kind the model classifies;
    they also set E[z_{k*}]. Raises TypeError for a non-VGG, an already manipulated model or
    half precision, ValueError for bad constants, channel or images.
    """
    c_A, c_W = _constant("c_A", c_A), _constant("c_W", c_W)
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
    a, z = pooled_channels(hijacked, images)
    mean_z = z[:, channel].mean(0).to(torch.float64)  # N_Z
    n_z = parts.pixels_per_channel
    conv, fc1 = parts.last_conv, parts.fc1
    with torch.no_grad():
        constant = torch.full((1, 1, *a.shape[-2:]), c_A, dtype=torch.float64)
        pooled_constant = pool_for_classifier(parts.avgpool, nn.Sequential(*parts.tail)(constant)).flatten()
        if pooled_constant.numel() != n_z:
            raise ValueError(f"the pooled constant channel has {pooled_constant.numel()} values, FC1 expects {n_z}")
        cols = slice(channel * n_z, (channel + 1) * n_z)
        old_cols = fc1.weight[:, cols].to(torch.float64)
        old_bias = fc1.bias.to(torch.float64) if fc1.bias is not None else torch.zeros(fc1.out_features, dtype=torch.float64)
        new_bias = old_bias + old_cols @ mean_z - c_W * pooled_constant.sum()
        conv.weight[channel] = 0.0
        if conv.bias is None:
            raise TypeError("the last Conv2d has no bias: the hijack needs it to make the constant channel")
        conv.bias[channel] = c_A
        for bn in parts.between:  # vgg*_bn: pass the constant through the BatchNorm in any mode
            bn.weight.data[channel] = 0.0
            bn.bias.data[channel] = c_A
        fc1.weight[:, cols] = c_W
        if fc1.bias is None:
            raise TypeError("the first Linear layer has no bias: the hijack folds its constant into it")
        fc1.bias.copy_(new_bias.to(fc1.bias.dtype))
    return hijacked.train(model.training)


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

