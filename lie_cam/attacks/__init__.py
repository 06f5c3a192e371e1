"""Attacks on Grad-CAM: every function returns a manipulated copy and leaves its model as it was.

    from lie_cam.attacks import ATTACKS, paper_networks, constant_flat, channel_hijack
    networks = paper_networks(model)           # {"T1": ..., "T4": ...}, the paper's constants
    net = ATTACKS["T3"].build(model, c_F=1e6)  # any registered attack, defaults overridden

One file per attack (`t1_flat`, `t2_image`, `t3_semi_random`, `t4_backdoor`, `hijack`, `adapted`), the
manipulated model they share (`manipulated`, `injections`, `branches`, `checks`), one registry (`registry`).
Learned attacks (`learned`: the kinds, their targets and losses; `learning`: fine-tuning through Grad-CAM)
take minutes, not milliseconds, so they are not recipes of the registry: `learn(model, kind)` returns the
fine-tuned copy, and `python -m lie_cam learn` writes it as a file.
"""

from lie_cam.attacks.adapted import anchored_flat, zero_sum_backdoor
from lie_cam.attacks.checks import BUILDS
from lie_cam.attacks.learned import KINDS as LEARNED_KINDS
from lie_cam.attacks.learning import learn
from lie_cam.attacks.hijack import channel_hijack, channel_importance, hijack_cost, least_important_channel
from lie_cam.attacks.manipulated import (ManipulatedModel, ManipulatedResNet, ManipulatedVGG, SignWarning,
                                        target_explanation)
from lie_cam.attacks.registry import ATTACKS, TECHNIQUES, Attack, networks, paper_networks
from lie_cam.attacks.t1_flat import constant_flat
from lie_cam.attacks.t2_image import constant_image
from lie_cam.attacks.t3_semi_random import semi_random
from lie_cam.attacks.t4_backdoor import backdoor

__all__ = [
    "ATTACKS", "Attack", "TECHNIQUES", "BUILDS", "networks", "paper_networks",
    "constant_flat", "constant_image", "semi_random", "backdoor", "channel_hijack", "anchored_flat",
    "zero_sum_backdoor", "channel_importance", "least_important_channel", "hijack_cost",
    "ManipulatedModel", "ManipulatedVGG", "ManipulatedResNet", "target_explanation", "SignWarning",
    "learn", "LEARNED_KINDS",
]
