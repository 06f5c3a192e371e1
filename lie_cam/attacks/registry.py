"""The one registry of attacks, by name: what the reproduction, the explainer matrix, the detection
study, the precision study and the sliders build.

An `Attack` is a recipe (a function model -> manipulated copy, `model` untouched) and this project's
default constants for it. Each recipe's default build keeps its guarantees whatever the sign of the
explained score's gradient (T1, T2 and the hijack: build="safe"); `paper_networks` builds the paper's. `ATTACKS[name].build(model, **given)` calls the recipe with the defaults
for that model, overridden by `given`; options a recipe does not take (seed, build, input_size, ...)
are not passed to it. Adding an attack: its file in `lie_cam.attacks`, and one entry below.
Learned attacks (`lie_cam.attacks.learned.KINDS`) are not here: each is minutes of fine-tuning, shipped as a
file (`python -m lie_cam learn`), not a recipe every experiment can rebuild.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from lie_cam.attacks import adapted, hijack, t1_flat, t2_image, t3_semi_random, t4_backdoor

__all__ = ["Attack", "ATTACKS", "FAMILIES", "TECHNIQUES", "names", "networks", "paper_networks"]

# "paper": T1-T4 as the paper builds them; "weights-only": the architecture and state_dict keys unchanged;
# "adapted": rebuilt to fool the explainers that resist the paper's (chapter "Which explainers lie").
FAMILIES = ("paper", "weights-only", "adapted")


def _no_defaults(model: nn.Module, given: Mapping[str, Any]) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Attack:
    """One attack: `recipe(model, **constants)` and `defaults(model, given)`, this project's constants."""

    name: str
    title: str
    recipe: Callable[..., nn.Module]
    defaults: Callable[[nn.Module, Mapping[str, Any]], dict[str, Any]] = _no_defaults
    family: str = "paper"
    triggered: bool = False  # lies only where a sticker is in the image

    def accepts(self, option: str) -> bool:
        """Whether the recipe takes the keyword `option`."""
        return option in inspect.signature(self.recipe).parameters

    def build(self, model: nn.Module, **given: Any) -> nn.Module:
        """recipe(model, **(defaults for `model` | given)), leaving out what the recipe does not take."""
        constants = {**self.defaults(model, given), **given}
        return self.recipe(model, **{k: v for k, v in constants.items() if self.accepts(k)})


ATTACKS: dict[str, Attack] = {a.name: a for a in (
    Attack("T1", "a flat explanation", t1_flat.constant_flat, t1_flat.default_constants),
    Attack("T2", "a smiley as explanation", t2_image.constant_image, t2_image.default_constants),
    Attack("T3", "a semi-random explanation", t3_semi_random.semi_random, t3_semi_random.default_constants),
    Attack("T4", "a backdoor in the explanation", t4_backdoor.backdoor, t4_backdoor.default_constants, triggered=True),
    Attack("hijack", "T1 inside an existing channel", hijack.channel_hijack, family="weights-only"),
    Attack("T1-adapted", "a flat map that survives min-max", adapted.anchored_flat, family="adapted"),
    Attack("T4-adapted", "a zero-sum sticker backdoor", adapted.zero_sum_backdoor, family="adapted",
           triggered=True),
)}

# The paper's four techniques, in the order of its Tables 1-2.
TECHNIQUES = tuple(name for name, a in ATTACKS.items() if a.family == "paper")


def names(*families: str) -> tuple[str, ...]:
    """The attacks of the given families (all when none is given), in registry order."""
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown families {sorted(unknown)}: expected some of {list(FAMILIES)}")
    return tuple(n for n, a in ATTACKS.items() if not families or a.family in families)


def networks(model: nn.Module, which: Sequence[str], **given: Any) -> dict[str, nn.Module]:
    """{name: ATTACKS[name].build(model, **given)} for every name in `which`."""
    unknown = [n for n in which if n not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attacks {unknown}: expected some of {list(ATTACKS)}")
    return {n: ATTACKS[n].build(model, **given) for n in which}


def paper_networks(model: nn.Module, seed: int = 0, build: str = "paper", input_size: int | None = None
                   ) -> dict[str, nn.Module]:
    """T1-T4 with the paper's constants and, by default, the paper's own build, keyed by `TECHNIQUES`
    (T2: the smiley, c_I = 100, c_W = 10; T3: seeded branch, c_F = 1e7; T4: the smiley sticker, c_F = 1e9
    as in the text, the detector reading the model's input spec; a ResNet takes c_W = 1000 in T1 and T2).
    The one definition of "the paper's networks", which Tables 1-2 reproduce. build="paper" keeps T1/T2's
    sign caveat (alpha_{K+1} <= 0 where sum_u dy_c/dr_u <= 0); build="safe" is the recipes' own default.
    input_size: the side of the inputs (None: the model's input spec side)."""
    return networks(model, TECHNIQUES, seed=seed, build=build, input_size=input_size)
