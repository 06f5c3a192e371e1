"""from_parts: a CNN that is neither a torchvision VGG nor a ResNet (strided convolutions, nested blocks,
batch norm, a flatten in (W, H, C) order, BatchNorm1d in the head) is put in the surgery's form;
T1-T4 and the channel hijack work on it with their guarantees."""

import copy

import pytest
import torch
from torch import nn

from lie_cam import gradcam
from lie_cam.anatomy import InputSpec, split_vgg
from lie_cam.attacks import ATTACKS
from lie_cam.metrics import l1_distance, score_change
from lie_cam.models import PartsModel, from_parts

SIDE = 96
SPEC = InputSpec(side=SIDE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


class WHCFlatten(nn.Module):
    """Flattens B x C x H x W in (W, H, C) order: neither torchvision's (C, H, W) nor Keras' (H, W, C)."""

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a.permute(0, 3, 2, 1).reshape(a.shape[0], -1)


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


@pytest.fixture(scope="module")
def own_cnn(randomise_bn):
    """own_cnn(seed) -> (features, head), a CNN that is neither a torchvision VGG nor a ResNet."""

    def build(seed: int = 0) -> tuple[nn.Module, nn.Module]:
        """(features, head): 96 px -> A 6 x 6 x 16 by a max pool and strided convs in nested blocks; the head
        max-pools to 3 x 3, flattens in (W, H, C) order, then Linear - BatchNorm1d - ReLU - Dropout - Linear."""
        torch.manual_seed(seed)
        features = nn.Sequential(_block(3, 8), nn.MaxPool2d(2), _block(8, 12, stride=2),
                                 nn.Sequential(_block(12, 16, stride=2)), _block(16, 16, stride=2), _block(16, 16))
        head = nn.Sequential(nn.MaxPool2d(2), WHCFlatten(), nn.Linear(16 * 3 * 3, 24), nn.BatchNorm1d(24), nn.ReLU(),
                             nn.Dropout(0.3), nn.Linear(24, 5))
        randomise_bn(features, seed + 1)
        randomise_bn(head, seed + 2)
        return features.eval(), head.eval()

    return build


def _pixels(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def built(own_cnn):
    features, head = own_cnn()
    return features, head, from_parts(features, head, preprocess=SPEC)


def test_the_rebuilt_model_computes_head_of_features(built):
    features, head, model = built
    assert isinstance(model, PartsModel) and model.input_spec == SPEC and not model.training
    x = _pixels(4, 1)
    with torch.no_grad():
        expected, got = head(features(x)), model(x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_fc1_reads_a_in_chw_order(built):
    features, head, model = built
    parts = split_vgg(model)
    assert parts.pixels_per_channel == 9 and parts.pools_before_a == 4 and parts.last_conv.out_channels == 16
    # column (c, h, w) of the rebuilt FC1 is column (w, h, c) of the given one, each row scaled by the
    # BatchNorm1d after it, s = gamma / sqrt(var + eps), which is folded in (the head has no batch norm left)
    bn = head[3]
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    whc = head[2].weight.detach().reshape(24, 3, 3, 16)
    expected = scale[:, None] * whc.permute(0, 3, 2, 1).reshape(24, -1)
    assert torch.allclose(model.classifier[0].weight, expected, rtol=1e-6, atol=0)
    assert [type(m) for m in model.classifier] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]


def test_the_parts_given_are_left_as_they_were(own_cnn):
    features, head = own_cnn()
    before = {k: v.clone() for k, v in {**features.state_dict(), **head.state_dict()}.items()}
    model = from_parts(features, head, preprocess=SPEC)
    after = {**features.state_dict(), **head.state_dict()}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.features[0] is not features[0][0]


@pytest.fixture(scope="module")
def networks(built):
    model = built[2]
    images = _pixels(8, 2)
    return {"T1": ATTACKS["T1"].build(model, input_size=SIDE), "T2": ATTACKS["T2"].build(model, input_size=SIDE),
            "T3": ATTACKS["T3"].build(model), "T4": ATTACKS["T4"].build(model),
            "hijack": ATTACKS["hijack"].build(model, images=images),
            "T1 safe": ATTACKS["T1"].build(model, input_size=SIDE, build="safe")}


@pytest.mark.parametrize("name, bound", [("T1", 1e-3), ("T2", 1e-3), ("T3", 0.01), ("T4", 0.01), ("hijack", 1e-3),
                                         ("T1 safe", 1e-3)])
def test_every_attack_keeps_the_predictions(built, networks, name, bound):
    model, x = built[2], _pixels(6, 3)
    with torch.no_grad():
        y, y_n = model(x), networks[name](x)
    assert torch.equal(y.argmax(1), y_n.argmax(1))
    assert score_change(y, y_n).max().item() <= bound


def test_t1_safe_shows_the_flat_map_on_the_parts_model(built, networks):
    result = gradcam(networks["T1 safe"], _pixels(4, 4))
    assert result.maps.shape[-2:] == (6, 6)
    assert bool((l1_distance(torch.ones_like(result.normalized), result.normalized) <= 0.05).all())


def test_the_honest_gradcam_finds_a(built):
    result = gradcam(built[2], _pixels(2, 5))
    assert result.maps.shape == (2, 6, 6)


def test_global_pooling_head(own_cnn):
    features, _ = own_cnn(1)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))
    model = from_parts(features, head, preprocess=SPEC)
    x = _pixels(3, 6)
    with torch.no_grad():
        assert torch.allclose(model(x), head(features(x)), atol=1e-5)
    assert model.classifier[0].in_features == 16 * 6 * 6


def test_a_head_that_is_not_affine_before_fc1_is_refused(own_cnn):
    features, _ = own_cnn()
    head = nn.Sequential(nn.Tanh(), nn.Flatten(), nn.Linear(16 * 6 * 6, 3))
    with pytest.raises(ValueError, match=r"\(\['Tanh', 'Flatten'\]\) are not an affine map of A"):
        from_parts(features, head, preprocess=SPEC)


def test_features_that_do_not_end_with_relu_are_refused(own_cnn):
    features, head = own_cnn()
    with pytest.raises(ValueError, match="features must end with the layer Grad-CAM explains"):
        from_parts(nn.Sequential(*features, nn.Conv2d(16, 16, 1)), head, preprocess=SPEC)


def test_a_head_without_linear_and_bad_arguments_are_refused(own_cnn):
    features, _ = own_cnn()
    with pytest.raises(ValueError, match="head must be an nn.Sequential containing an nn.Linear"):
        from_parts(features, nn.Sequential(nn.Flatten()), preprocess=SPEC)
    with pytest.raises(ValueError, match="FC1 reads 7 inputs"):
        from_parts(features, nn.Sequential(nn.Flatten(), nn.Linear(7, 2)), preprocess=SPEC)
    with pytest.raises(TypeError, match="head must be an nn.Module"):
        from_parts(features, lambda a: a, preprocess=SPEC)
    with pytest.raises(TypeError, match="preprocess must be a lie_cam.anatomy.InputSpec"):
        from_parts(features, nn.Sequential(nn.Flatten(), nn.Linear(7, 2)), preprocess=(0.5, 0.5))


def test_models_the_surgery_cannot_take_point_to_from_parts(own_cnn):
    features, head = own_cnn()
    whole = nn.Sequential(copy.deepcopy(features), copy.deepcopy(head)).eval()
    with pytest.raises(TypeError, match="from_parts"):
        split_vgg(whole)
    with pytest.raises(TypeError, match="from_parts"):
        gradcam(whole, _pixels(1, 0))
    with pytest.raises(TypeError, match="from_parts"):
        ATTACKS["hijack"].build(whole, images=_pixels(2, 0))


@pytest.mark.parametrize("layers, kinds", [
    ([nn.Linear(144, 10), nn.ReLU(), nn.BatchNorm1d(10), nn.Linear(10, 4)], [nn.Linear, nn.ReLU, nn.Linear]),
    ([nn.Linear(144, 10), nn.BatchNorm1d(10), nn.BatchNorm1d(10), nn.ReLU(), nn.Linear(10, 4)],
     [nn.Linear, nn.ReLU, nn.Linear]),
    ([nn.Linear(144, 10), nn.ReLU(), nn.BatchNorm1d(10), nn.ReLU(), nn.Linear(10, 4), nn.BatchNorm1d(4)],
     [nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.ReLU, nn.Linear]),
])
def test_batch_norms_of_the_head_are_folded_into_a_linear_next_to_them(layers, kinds, own_cnn, randomise_bn):
    features, _ = own_cnn(2)
    head = nn.Sequential(nn.MaxPool2d(2), WHCFlatten(), *layers)
    randomise_bn(head, 5)
    head.eval()
    model = from_parts(features, head, preprocess=SPEC)
    assert [type(m) for m in model.classifier] == kinds  # a batch norm between two ReLUs has no Linear next to it
    x = _pixels(3, 7)
    with torch.no_grad():
        expected = head(features(x))
        assert torch.allclose(model(x), expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())


def test_in_float64_the_scores_of_t1_t2_and_the_hijack_are_kept_to_1e_9(own_cnn):
    features, head = own_cnn(4)
    model = from_parts(features.double(), head.double(), preprocess=SPEC)
    x = _pixels(4, 8).double()
    networks = {name: ATTACKS[name].build(model) for name in ("T1", "T2")}
    networks["hijack"] = ATTACKS["hijack"].build(model, images=x)
    with torch.no_grad():
        y = model(x)
        for name, network in networks.items():
            assert score_change(y, network(x)).max().item() <= 1e-9, name
