"""lie_cam.anatomy: the one cut of the honest model at A, for every layout the project supports."""

import pytest
import torch
from torch import nn

from lie_cam.anatomy import InputSpec, cut_at_a, feature_size, halvings, input_spec, is_manipulated
from lie_cam.attacks import constant_flat
from lie_cam.compat import import_torchvision
from lie_cam.gradcam import gradcam, head_gradcam, target_layer
from lie_cam.models import compact_resnet
from lie_cam.normalization import IMAGENET_MEAN, IMAGENET_STD


def _vgg_bn() -> nn.Module:
    import_torchvision()
    from torchvision.models.vgg import VGG, make_layers

    torch.manual_seed(0)
    model = VGG(make_layers([8, "M", 16, "M", 16, "M", 16, "M", 16, "M"], batch_norm=True), num_classes=5)
    model.classifier = nn.Sequential(nn.Linear(16 * 49, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, 5))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # statistics that are not the identity
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval().double()


@pytest.mark.parametrize("kind", ["vgg", "vgg_bn", "resnet"])
def test_the_cut_is_the_model_and_its_gradcam(small_vgg, random_input, kind):
    model = {"vgg": lambda: small_vgg(0, dtype=torch.float64), "vgg_bn": _vgg_bn,
             "resnet": lambda: compact_resnet(4).eval().double()}[kind]()
    x = random_input(2, 1, torch.float64)
    cut = cut_at_a(model)
    with torch.no_grad():
        a = cut.to_a(cut.trunk(x))
        assert torch.equal(cut.head(a), model(x))
    assert cut.layer is target_layer(model)
    assert a.shape[-1] == feature_size(model) == 224 // 2 ** halvings(model)
    honest = gradcam(model, x)
    assert torch.allclose(head_gradcam(cut.head, a).maps, honest.maps, rtol=1e-12, atol=1e-12)


def test_a_manipulated_model_is_not_cut_and_other_networks_are_refused(small_vgg):
    t1 = constant_flat(small_vgg(0))
    assert is_manipulated(t1) and not is_manipulated(small_vgg(0))
    with pytest.raises(TypeError, match="already manipulated"):
        cut_at_a(t1)
    with pytest.raises(TypeError, match="expected a torchvision ResNet"):
        cut_at_a(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    assert halvings(t1) == 4  # a manipulated model knows its own


def test_the_input_spec_is_the_models_own_or_imagenets(small_vgg):
    model = small_vgg(0)
    assert input_spec(model) == InputSpec(224, IMAGENET_MEAN, IMAGENET_STD)
    model.input_spec = InputSpec(side=240, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert input_spec(model).side == 240 and input_spec(model).std == (1.0, 1.0, 1.0)
