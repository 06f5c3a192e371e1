import copy
import warnings

import pytest
import torch

from lie_cam import attacks as surgery
from lie_cam import gradcam
from lie_cam.attacks import channel_hijack, channel_importance, hijack_cost, least_important_channel
from lie_cam.metrics import l1_distance


@pytest.fixture(scope="module")
def setting(random_input, small_vgg):
    model = small_vgg()
    images = random_input(8)
    return model, images, channel_hijack(model, images)


def test_same_class_keys_and_shapes(setting):
    model, _, hijacked = setting
    assert type(hijacked) is type(model)
    before, after = model.state_dict(), hijacked.state_dict()
    assert list(before) == list(after)
    assert all(before[k].shape == after[k].shape and before[k].dtype == after[k].dtype for k in before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    wired = ["features.28.weight", "features.28.bias", "classifier.0.weight", "classifier.0.bias",
             "classifier.3.weight", "classifier.3.bias", "classifier.6.weight", "classifier.6.bias"]
    assert set(changed) <= set(wired)  # the channel, and one unit per hidden layer (a bias may stay 0)
    assert {"features.28.bias", "classifier.0.weight", "classifier.3.weight", "classifier.6.weight"} <= set(changed)


def test_the_paper_build_rewrites_the_channel_and_fc1_only(setting):
    model, images, _ = setting
    paper = channel_hijack(model, images, build="paper")
    before, after = model.state_dict(), paper.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["features.28.weight", "features.28.bias", "classifier.0.weight", "classifier.0.bias"]
    k = least_important_channel(model, images)
    n_z = model.classifier[0].in_features // model.features[28].out_channels
    assert bool((paper.classifier[0].weight[:, k * n_z : (k + 1) * n_z] == 100.0).all())


def test_input_not_modified(random_input, small_vgg):
    model = small_vgg()
    reference = copy.deepcopy(model.state_dict())
    channel_hijack(model, random_input(8))
    assert all(torch.equal(reference[k], v) for k, v in model.state_dict().items())


def test_only_the_chosen_channel_is_rewritten(setting):
    model, images, hijacked = setting
    k = least_important_channel(model, images)
    conv_o, conv_h = model.features[28], hijacked.features[28]
    assert torch.equal(conv_h.weight[k], torch.zeros_like(conv_h.weight[k])) and conv_h.bias[k].item() == 100.0
    others = [c for c in range(conv_o.out_channels) if c != k]
    assert torch.equal(conv_o.weight[others], conv_h.weight[others])
    n_z = model.classifier[0].in_features // conv_o.out_channels
    columns = hijacked.classifier[0].weight[:, k * n_z : (k + 1) * n_z]  # the safe build's wire: one row reads k*
    wire = (columns == 100.0).all(1)
    assert int(wire.sum()) == 1 and bool((columns[~wire] == 0).all())
    u1 = int(wire.nonzero())
    assert bool((hijacked.classifier[0].weight[u1].count_nonzero() == n_z))
    assert hijacked.classifier[0].bias[u1].item() == 1.0 - 100.0 * 100.0 * n_z  # h_{u_1} = 1 on the constant


def test_least_important_channel_is_the_cheapest(setting):
    model, images, _ = setting
    importance = channel_importance(model, images)
    k = least_important_channel(model, images)
    assert importance["score_change"][k] == importance["score_change"].min()
    assert importance["score_change"].max() > importance["score_change"][k]


def test_gradcam_matches_flat_target_and_scores_stay(random_input, setting):
    model, _, hijacked = setting
    x = random_input(4, seed=3)
    result = gradcam(hijacked, x)
    l1 = l1_distance(torch.ones_like(result.maps), result.normalized)
    assert bool((l1 < 0.05).all()), l1  # out of 14 x 14 = 196 for a wrong map
    honest = gradcam(model, x)
    assert float(l1_distance(torch.ones_like(honest.maps), honest.normalized).min()) > 10
    cost = hijack_cost(model, hijacked, x, honest.classes)
    assert cost.accuracy_change == 0.0 and cost.accuracy_hijacked == 1.0
    assert cost.score_change_max < 0.5 * float(honest.logits.abs().max())


def test_chosen_channel_and_reexport(random_input, small_vgg):
    model, images = small_vgg(), random_input(4)
    hijacked = surgery.channel_hijack(model, images, channel=3, c_A=10.0, c_W=5.0)
    assert hijacked.features[28].bias[3].item() == 10.0


@pytest.mark.parametrize("bad", ["half", "manipulated", "resnet", "c_A", "channel", "images"])
def test_bad_input(random_input, small_vgg, bad):
    model, images = small_vgg(), random_input(4)
    if bad == "half":
        with pytest.raises(TypeError, match="float16"):
            channel_hijack(model.half(), images)
    elif bad == "manipulated":
        with pytest.raises(TypeError, match="already manipulated"):
            channel_hijack(surgery.constant_flat(model), images)
    elif bad == "resnet":
        with pytest.raises(TypeError, match="expected a torchvision VGG"):
            channel_hijack(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), images)
    elif bad == "c_A":
        with pytest.raises(ValueError, match="c_A"):
            channel_hijack(model, images, c_A=-1.0)
    elif bad == "channel":
        with pytest.raises(ValueError, match="channel must be"):
            channel_hijack(model, images, channel=10_000)
    else:
        with pytest.raises(ValueError, match="images must be"):
            channel_hijack(model, images[0])


def test_batchnorm_layout_gives_a_flat_map(random_input):
    from lie_cam.models import compact_vgg16

    torch.manual_seed(0)
    model = compact_vgg16(width=1 / 16, hidden=32, batch_norm=True).eval()
    hijacked = channel_hijack(model, random_input(8))
    assert list(hijacked.state_dict()) == list(model.state_dict())
    assert isinstance(hijacked.features[-2], torch.nn.ReLU)  # conv, BatchNorm2d, ReLU, pool
    result = gradcam(hijacked, random_input(3, seed=2), layer=hijacked.features[-2])  # target_layer wants plain VGG
    assert bool((l1_distance(torch.ones_like(result.maps), result.normalized) < 0.05).all())




@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_hijack_is_flat_where_the_paper_build_is_empty(random_input, small_vgg, dtype, negative_sign_vgg):
    model = negative_sign_vgg(dtype)
    images, x = random_input(8, 0, dtype), random_input(4, 3, dtype)
    honest = gradcam(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hijacked = channel_hijack(model, images)
    assert list(hijacked.state_dict()) == list(model.state_dict())
    result = gradcam(hijacked, x)
    assert torch.equal(result.classes, honest.classes)
    assert bool((l1_distance(torch.ones_like(result.maps), result.normalized) < 0.05).all())
    k = least_important_channel(model, images)
    assert torch.allclose(result.alpha[:, k], torch.full((4,), 100.0 * 49 / 196, dtype=dtype))  # c_W N_Z / N_A
    assert float((result.logits - honest.logits).abs().max()) < 1e-3
    with pytest.warns(surgery.SignWarning, match=r"alpha_\{k\*\} <= 0 .* on 8 of 8 images.*build=\"safe\""):
        paper = channel_hijack(model, images, build="paper")
    assert bool((l1_distance(torch.ones_like(result.maps), gradcam(paper, x).normalized) > 100).all())


def test_safe_hijack_refuses_a_head_it_cannot_wire(random_input, small_vgg):
    model = copy.deepcopy(small_vgg())
    model.classifier[1] = torch.nn.Tanh()
    with pytest.raises(ValueError, match=r"\['Tanh'\]: pass build=\"paper\""):
        channel_hijack(model, random_input(4))
    with pytest.raises(ValueError, match="build must be one of"):
        channel_hijack(model, random_input(4), build="fast")


@pytest.mark.parametrize("side", [240, 80, 48])
def test_hijack_at_any_input_size(small_vgg, side):
    model = small_vgg(0, dtype=torch.float64)
    g = torch.Generator().manual_seed(side)
    images, x = torch.randn(8, 3, side, side, generator=g, dtype=torch.float64), torch.randn(
        3, 3, side, side, generator=g, dtype=torch.float64)
    hijacked = channel_hijack(model, images)
    result, honest = gradcam(hijacked, x), gradcam(model, x)
    assert result.maps.shape == (3, side // 16, side // 16)
    assert torch.equal(result.classes, honest.classes)
    assert bool((l1_distance(torch.ones_like(result.maps), result.normalized) < 0.05).all())


@pytest.mark.parametrize("widths", [(), (16, 8, 12)])
def test_safe_hijack_wires_heads_of_any_depth(random_input, small_vgg, widths):
    """No hidden layer (FC1 gives the logits: no wire needed) and three (a deep head like the tumour
    model's Dense 64 -> 128 -> 256 -> 4), every hidden layer's weights >= 0 and the logits' <= 0."""
    torch.manual_seed(0)
    model = copy.deepcopy(small_vgg(0, dtype=torch.float64))
    sizes = (model.classifier[0].in_features, *widths, 10)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        fc = torch.nn.Linear(n_in, n_out).double()
        with torch.no_grad():
            fc.weight.copy_(fc.weight.abs() if i < len(widths) else -fc.weight.abs())
        layers += [fc, torch.nn.ReLU()] if i < len(widths) else [fc]
    model.classifier = torch.nn.Sequential(*layers).eval()
    images, x = random_input(8, 0, torch.float64), random_input(3, 3, torch.float64)
    hijacked, honest = channel_hijack(model, images), gradcam(model, x)
    result = gradcam(hijacked, x)
    assert torch.equal(result.classes, honest.classes)
    assert bool((l1_distance(torch.ones_like(result.maps), result.normalized) < 0.05).all())
    k = least_important_channel(model, images)
    assert torch.allclose(result.alpha[:, k], torch.full((3,), 100.0 * 49 / 196, dtype=torch.float64))
