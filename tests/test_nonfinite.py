"""A model whose weights hold NaN or infinity: Grad-CAM names the weights, not the inputs (issue 23)."""

import copy

import pytest
import torch

from lie_cam import gradcam
from lie_cam.attacks import ATTACKS
from lie_cam.gradcam import head_gradcam, non_finite_weights


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_gradcam_blames_the_weights_not_the_inputs(small_vgg, random_input, value):
    model = small_vgg()
    with torch.no_grad():
        model.features[0].weight[0, 0, 0, 0] = value
    assert non_finite_weights(model) == ["features.0.weight"]
    with pytest.raises(ValueError, match=r"weights are not: features\.0\.weight") as info:
        gradcam(model, random_input(1))
    assert "inputs near" not in str(info.value)


def test_head_gradcam_of_a_manipulated_model_names_its_weights(small_vgg, random_input):
    net = copy.deepcopy(ATTACKS["T3"].build(small_vgg()))
    x = random_input(1)
    with torch.no_grad():
        a = net.activations(x)
        net.classifier[-1].bias[0] = float("nan")
    with pytest.raises(ValueError, match=r"classifier\.\d+\.bias"):
        head_gradcam(net.head, a)


def test_overflowing_inputs_are_still_blamed_on_the_inputs(small_vgg, random_input):
    with pytest.raises(ValueError, match="inputs near the limit of float32"):
        gradcam(small_vgg(), random_input(1).clamp(-1, 1) * 3e38)
