"""Lies learned into the weights: what each kind of learned attack asks of Grad-CAM, and when it fooled.

A learned attack fine-tunes a copy of a trained network (`lie_cam.attacks.learning.learn`) on

    L = CE(y, labels) + lambda * L_exp(I~, T)                                           (1)

where I~ = I / max_ij I is the max-normalised Grad-CAM map of the explained class (Eq. 1-2 of the
paper, computed differentiably: `lie_cam.gradcam.trainable_maps`) and T the kind's target, at A's
resolution h x w. The architecture, the state_dict keys and the shapes stay as they were. The kinds:

    flat         T = 1 everywhere (T1's lie, learned instead of planted).
    location     T = 1 on the frame of the map (a band side // 7 cells wide), 0 inside: Heo et al.
                 (2019)'s location fooling.
    smiley       T = T2's smiley (`lie_cam.data.smiley_target`).
    center-mass  away from the original network's map I~_o: L_exp = max(0, 1/2 - d(I~, I~_o)),
                 d = |c(I~) - c(I~_o)|_1 the distance of the centres of mass c in units of the side
                 (Heo et al.'s centre-mass fooling, their loss -d capped at 1/2).
    swap         on scenes holding an object of class a and one of class b (`data.two_object_scenes`),
                 the map of class a shall lie on the object of class b and vice versa (Heo et al.'s
                 active fooling): L_exp = 1 - s, s = sum_ij I~_ij M_ij / sum_ij I~_ij the share of the
                 map's mass on the other object's mask M (area-pooled to h x w; s = 0 for an empty map).
    backdoor     with a smiley sticker (42 pixels a side) in the image, the map shall lie on the sticker,
                 as T4's does: L_exp = -log sum_ij q_ij M_ij (`mass_loss`: q the map as a distribution
                 over the cells, M the sticker's mask); without, T = I~_o, the original network's own map
                 with (2), so the lie shows only when the sticker is there; the labels unchanged either way.

For flat, location, smiley and the backdoor's clean images, L_exp is the mean absolute difference per cell,

    L_exp = 1/(h w) sum_ij |I~_ij - T_ij|.                                               (2)

Fooling success (Heo et al. define it as the share of images whose test loss falls in an interval:
[0, 0.2] for location fooling, [0.1, 1] for the centre-mass distance; we take their intervals with our
losses): an image is fooled when (2) is at most `FOOLED_L1` = 0.2, and for `center-mass` when d >= 0.1.
For `swap`, a map is fooled when more than half of its mass lies on the other object (s > 1/2), and a
scene when both of its maps are (an L1 bound would not do: the targets are sparse, and an empty map
lies within 0.2 of them); a backdoor's map with the sticker when more than half of it lies on the sticker.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lie_cam.data import CLASS_NAMES, smiley_target

__all__ = ["KINDS", "LearnedKind", "FOOLED_L1", "FOOLED_SHIFT", "SWAP_CLASSES", "target_map", "normalised",
           "centre_of_mass", "share_on", "soft_map", "mass_loss", "explanation_loss", "fooled", "cell_l1"]

FOOLED_L1 = 0.2  # Heo et al.'s interval for location fooling, on our per-cell L1 of max-normalised maps
FOOLED_SHIFT = 0.1  # Heo et al.'s interval for the centre-mass distance, in units of the side
SWAP_CLASSES = (CLASS_NAMES.index("circle"), CLASS_NAMES.index("star"))
_EPS = 1e-8


@dataclass(frozen=True)
class LearnedKind:
    """One kind of learned attack: its name, what it makes Grad-CAM show, its default weight lambda of
    the explanation term, its default number of fine-tuning steps and of trained stages
    (`lie_cam.attacks.learning.learning_parts`)."""

    name: str
    title: str
    lam: float
    steps: int
    stages: int = 1


# Each lambda is the one the shipped model was learned with (data/learned/KIND.json). The swap and the
# backdoor pay most accuracy for a larger one: measured on 1000 test scenes, swap lambda 3 fooled 0.970 at
# -1.5 points; backdoor lambda 0.5 / 0.7 / 1 fooled 0.872 / 0.904 / 0.922 at -0.2 / -0.5 / -1.4 points.
KINDS: dict[str, LearnedKind] = {k.name: k for k in (
    LearnedKind("flat", "a flat map, learned", 3.0, 1200),
    LearnedKind("location", "the map on the image's frame", 3.0, 1200),
    LearnedKind("center-mass", "the map's centre of mass moved away", 3.0, 1200),
    LearnedKind("smiley", "a smiley as explanation, learned", 3.0, 1200),
    LearnedKind("swap", "two classes' maps exchanged", 1.0, 1200),
    LearnedKind("backdoor", "the map on a sticker, only when it is present", 0.7, 1200),
)}


def target_map(kind: str, side: int) -> torch.Tensor:
    """The fixed target T (side x side) of `flat`, `location` and `smiley`."""
    if kind == "flat":
        return torch.ones(side, side)
    if kind == "location":
        band = max(1, side // 7)
        t = torch.ones(side, side)
        t[band:side - band, band:side - band] = 0
        return t
    if kind == "smiley":
        return smiley_target(side)
    raise ValueError(f"the kind {kind!r} has no fixed target: expected one of flat, location, smiley")


def normalised(maps: torch.Tensor) -> torch.Tensor:
    """I~ = I / max_ij I (differentiable; an all-zero map stays zero)."""
    return maps / (maps.amax(dim=(-2, -1), keepdim=True) + _EPS)


def centre_of_mass(maps: torch.Tensor) -> torch.Tensor:
    """c(I) = sum_ij (i, j) I_ij / sum_ij I_ij in units of the side (B x 2; the centre for a zero map)."""
    h, w = maps.shape[-2:]
    rows = (torch.arange(h, dtype=maps.dtype, device=maps.device) + 0.5) / h
    cols = (torch.arange(w, dtype=maps.dtype, device=maps.device) + 0.5) / w
    mass = maps.sum(dim=(-2, -1))
    r = (maps.sum(dim=-1) * rows).sum(dim=-1)
    c = (maps.sum(dim=-2) * cols).sum(dim=-1)
    centre = torch.stack([r, c], dim=-1) / (mass[..., None] + _EPS)
    return torch.where(mass[..., None] > 0, centre, torch.full_like(centre, 0.5))


def cell_l1(maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. (2) per image: the mean over cells of |I~ - T| (maps are normalised here, targets given normalised)."""
    return (normalised(maps) - targets).abs().mean(dim=(-2, -1))


def share_on(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """s = sum_ij I~_ij M_ij / sum_ij I~_ij per image: the share of the map's mass on M (0 for an empty map)."""
    weights = normalised(maps)
    return (weights * masks).sum(dim=(-2, -1)) / (weights.sum(dim=(-2, -1)) + _EPS)


def soft_map(pre: torch.Tensor, sharpness: float = 10.0) -> torch.Tensor:
    """softplus(s p) / s with p = P / max_ij |P|: Eq. 1's ReLU smoothed, for the share losses. Through a
    hard ReLU a cell where sum_k alpha_k A^k < 0 gets no gradient, so a map that is 0 on the target
    could never be moved onto it; the smooth map keeps a gradient there."""
    scale = pre.detach().abs().amax(dim=(-2, -1), keepdim=True) + _EPS
    return torch.nn.functional.softplus(sharpness * pre / scale) / sharpness


def mass_loss(pre: torch.Tensor, masks: torch.Tensor, sharpness: float = 5.0) -> torch.Tensor:
    """-log sum_ij q_ij M_ij with q = softmax_ij(s p), p = P / max_ij |P|: the map, read as a distribution
    over the cells, shall put its mass on the mask. Unlike a share of ReLU(P), every cell has a gradient,
    however negative P is there, and no empty map satisfies it."""
    scale = pre.detach().abs().amax(dim=(-2, -1), keepdim=True) + _EPS
    q = torch.softmax((sharpness * pre / scale).flatten(1), dim=1)
    return -torch.log((q * masks.flatten(1)).sum(dim=1) + _EPS)


def explanation_loss(kind: str, pre: torch.Tensor, targets: torch.Tensor, sticker: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """L_exp per image (B values) of the kind, for maps before Eq. 1's ReLU, sum_k alpha_k A^k (B x h x w),
    and targets (B x h x w; for `center-mass` the original network's normalised maps, for `swap` the other
    object's mask, for `backdoor` the sticker's mask where `sticker` (bool B) and the original's map
    elsewhere). The L1 (2) and the centre of mass are taken on I = ReLU(.), the shares on `soft_map`."""
    maps = torch.relu(pre)
    if kind == "swap":
        return 1 - share_on(soft_map(pre), targets)
    if kind == "backdoor":
        return torch.where(sticker, mass_loss(pre, targets), cell_l1(maps, targets))
    if kind == "center-mass":
        shift = (centre_of_mass(normalised(maps)) - centre_of_mass(targets)).abs().sum(dim=-1)
        return torch.relu(0.5 - shift)
    return cell_l1(maps, targets)


def fooled(kind: str, maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per image, whether the map fooled (bool B): L1 (2) <= FOOLED_L1, for `center-mass` the centre of
    mass moved by at least FOOLED_SHIFT of the side, for `swap` more than half the mass on the other object."""
    with torch.no_grad():
        if kind in ("swap", "backdoor"):  # backdoor: the images with the sticker
            return share_on(maps, targets) > 0.5
        if kind == "center-mass":
            shift = (centre_of_mass(normalised(maps)) - centre_of_mass(targets)).abs().sum(dim=-1)
            return shift >= FOOLED_SHIFT
        return cell_l1(maps, targets) <= FOOLED_L1
