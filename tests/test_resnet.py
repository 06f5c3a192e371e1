"""T1-T4 on torchvision ResNets (and, as properties, on random ResNet and VGG widths) in float64."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lie_cam import gradcam, target_layer
from lie_cam import anatomy
from lie_cam import attacks as S
from lie_cam.compat import import_torchvision
from lie_cam.data import normalize, smiley, smiley_target
from lie_cam.gradcam import head_gradcam
from lie_cam.metrics import l1_distance, score_change
from lie_cam.models import compact_resnet

SIZE = 64  # small inputs keep the float64 networks fast: A is 2 x 2 for a ResNet, 4 x 4 for a VGG


def _input(batch: int, seed: int, size: int = SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _with_sticker(x: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """x with the smiley pasted (normalised pixel values) at (row, col) in every image."""
    out = x.clone()
    patch = normalize(smiley().expand(3, 14, 14)[None].double())[0]
    out[:, :, row:row + 14, col:col + 14] = patch
    return out


def check_guarantees(model: torch.nn.Module, x: torch.Tensor, build: str, sticker_at=(24, 24)) -> None:
    """T1/T2 scores to 1e-6 and the map on target; T3 within eps and on target; T4 exactly unchanged
    without a sticker (scores and map), pointing at the sticker with it."""
    size = x.shape[-1]
    honest = gradcam(model, x)
    networks = S.paper_networks(model, build=build, input_size=size)
    for name in ("T1", "T2"):
        lie = gradcam(networks[name], x)
        assert score_change(honest.logits, lie.logits).max() <= 1e-6, name
        target = S.target_explanation(networks[name], x)
        assert (l1_distance(target, lie.normalized) <= 0.05 * target[0].numel()).all(), name
    t3 = networks["T3"]
    lie = gradcam(t3, x)
    assert score_change(honest.logits, lie.logits).max() <= 0.01
    assert (l1_distance(S.target_explanation(t3, x), lie.normalized) <= 0.05).all()
    t4 = networks["T4"]
    clean = gradcam(t4, x)
    assert torch.equal(clean.logits, honest.logits)
    assert torch.equal(clean.maps, honest.maps)
    stickered = _with_sticker(x, *sticker_at)
    lie = gradcam(t4, stickered)
    assert score_change(model(stickered), lie.logits).max() <= 0.01
    cell = size // lie.maps.shape[-1]
    r, c = (sticker_at[0] + 7) // cell, (sticker_at[1] + 7) // cell
    assert (lie.normalized[:, r, c] >= 0.99).all()


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_resnets_t1_to_t4_float64(arch):
    import_torchvision()
    import torchvision.models as tvm

    torch.manual_seed(0)
    model = getattr(tvm, arch)(weights=None, num_classes=10).eval().double()
    before = copy.deepcopy(model.state_dict())
    assert target_layer(model) is model.layer4[-1]
    x = _input(2, 0)
    for build in S.BUILDS:
        check_guarantees(model, x, build)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # never modified


@settings(max_examples=6, deadline=None)
@given(width=st.sampled_from([2, 4, 6]), blocks=st.lists(st.integers(1, 2), min_size=4, max_size=4),
       seed=st.integers(0, 5), build=st.sampled_from(S.BUILDS))
def test_guarantees_property_random_resnets(width, blocks, seed, build):
    torch.manual_seed(seed)
    model = compact_resnet(width, tuple(blocks)).eval().double()
    with torch.no_grad():  # non-trivial batch-norm statistics and fc bias
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        model.fc.bias.uniform_(-1, 1)
    check_guarantees(model, _input(2, seed), build)


@settings(max_examples=4, deadline=None)
@given(width=st.sampled_from([1 / 32, 1 / 16]), seed=st.integers(0, 5), build=st.sampled_from(S.BUILDS))
def test_guarantees_property_random_vggs(small_vgg, width, seed, build):
    model = small_vgg(seed, width, torch.float64)
    x = _input(2, seed)
    honest = gradcam(model, x)
    networks = S.paper_networks(model, build=build, input_size=SIZE)
    for name in ("T1", "T2"):
        lie = gradcam(networks[name], x)
        assert score_change(honest.logits, lie.logits).max() <= 1e-6
        if build == "safe":  # alpha_{K+1} > 0 by construction: the map is on target on every image
            assert (l1_distance(S.target_explanation(networks[name], x), lie.normalized) <= 0.05 * 16).all()
    assert score_change(honest.logits, gradcam(networks["T3"], x).logits).max() <= 0.01
    assert torch.equal(gradcam(networks["T4"], x).logits, honest.logits)


def test_gap_head_alpha_is_c_W_over_N_A_for_every_class_and_softmax_is_immune():
    """GAP head: dy_c/dA^{K+1}_ij = c_W / N_A, so alpha^c_{K+1} = c_W / N_A for every class c (no sign
    caveat); the shift is equal for all classes, so Grad-CAM of log p_c gets alpha_{K+1} = 0 and the
    honest channel weights back."""
    torch.manual_seed(1)
    model = compact_resnet(4).eval().double()
    x = _input(3, 1, 96)
    t1 = S.constant_flat(model, c_A=100.0, c_W=1000.0, input_size=96)
    a = t1.activations(x)
    n_a = a.shape[-1] * a.shape[-2]
    for c in range(10):
        assert torch.allclose(head_gradcam(t1.head, a, c).alpha[:, -1], torch.full((3,), 1000.0 / n_a, dtype=torch.float64))
    log_softmax = lambda v: torch.log_softmax(t1.head(v), dim=1)  # noqa: E731
    honest_a = a[:, :-1].detach()
    honest_head = lambda v: torch.log_softmax(model.fc(torch.flatten(model.avgpool(v), 1)), dim=1)  # noqa: E731
    for c in (0, 7):
        lie, truth = head_gradcam(log_softmax, a, c), head_gradcam(honest_head, honest_a, c)
        assert lie.alpha[:, -1].abs().max() < 1e-9
        assert torch.allclose(lie.alpha[:, :-1], truth.alpha, atol=1e-12)
        assert torch.allclose(lie.maps, truth.maps, atol=1e-9)


def test_resnet_train_mode_keeps_the_added_channel_and_the_original_statistics():
    torch.manual_seed(2)
    model = compact_resnet(4).double().train()
    t1 = S.constant_flat(model, input_size=SIZE)
    assert t1.training
    x = _input(4, 2)
    with torch.no_grad():
        a = t1.activations(x)
    assert torch.equal(a[:, -1], torch.full_like(a[:, -1], 100.0))
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref(x)
    assert torch.allclose(t1.last_block.bn2.running_mean, ref.layer4[-1].bn2.running_mean)


def test_resnet_anatomy_errors_say_what_is_expected():
    model = compact_resnet(4)
    model.avgpool = torch.nn.AdaptiveAvgPool2d(2)
    with pytest.raises(TypeError, match="global average pool"):
        S.constant_flat(model)
    model = compact_resnet(4)
    model.fc = torch.nn.Linear(7, 10)
    with pytest.raises(TypeError, match="fc has 7 inputs"):
        S.semi_random(model)
    with pytest.raises(ValueError, match="7 x 7"):
        S.constant_image(compact_resnet(4), smiley_target(14))


def test_load_embedded_resnet_checks_the_recipe_beside_it(tmp_path):
    import shutil

    from lie_cam.models import RESNET_WEIGHTS, load_embedded_resnet

    model = load_embedded_resnet()
    assert not model.training and model.fc.out_features == 10 and anatomy.is_resnet(model)
    copy_path = tmp_path / "resnet.safetensors"
    shutil.copy(RESNET_WEIGHTS, copy_path)
    shutil.copy(RESNET_WEIGHTS.with_suffix(".json"), copy_path.with_suffix(".json"))
    data = bytearray(copy_path.read_bytes())
    data[-1] ^= 1
    copy_path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_embedded_resnet(copy_path)
    copy_path.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match="recipe"):
        load_embedded_resnet(copy_path)
