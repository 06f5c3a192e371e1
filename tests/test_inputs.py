"""Bad or unusual input ends as a correct result or a clear error, never a silent wrong one (issue 9).

Each test here failed on the code before the fix it pins (commit 20e9361): a crash inside
torch, a truncated target, NaN maps, a corrupted network, or safetensors' internal messages.
"""

import copy

import numpy as np
import pytest
import torch
from captum.attr import LayerGradCam
from safetensors.torch import save_file
from torch import nn

from lie_cam import attacks as surgery
from lie_cam import gradcam, target_layer
from lie_cam.data import smiley, smiley_target
from lie_cam.gradcam import head_gradcam
from lie_cam.metrics import score_change
from lie_cam.models import compact_vgg16, load_embedded, load_vgg16, read_safetensors


# --- Grad-CAM at any conv layer ---------------------------------------------------------

@pytest.mark.parametrize("index", [0, 10, 28])
def test_gradcam_at_a_conv_layer_followed_by_an_inplace_relu_equals_captum(random_input, small_vgg, index):
    model = small_vgg(1).double()
    conv = model.features[index]
    assert isinstance(conv, nn.Conv2d) and model.features[index + 1].inplace
    x = random_input(3, 1, torch.float64)
    ours = gradcam(model, x, layer=conv)
    theirs = LayerGradCam(model, conv).attribute(x, target=ours.classes, relu_attributions=True)[:, 0]
    assert torch.allclose(ours.maps, theirs, rtol=1e-8, atol=1e-12 * float(theirs.detach().abs().max()))
    assert ours.maps.abs().sum() > 0


# --- targets ------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [[2.7, 3.9, 1.0], torch.tensor([2.7, 3.9, 1.0]), np.array([2.5, 1.0, 0.0]), 2.0])
def test_float_targets_are_refused_not_truncated(random_input, vgg, bad):
    with pytest.raises(TypeError, match="integer class"):
        gradcam(vgg, random_input(3), target=bad)


@pytest.mark.parametrize("bad", [True, [True, False, True], torch.tensor([True, False, True])])
def test_boolean_targets_are_refused(random_input, vgg, bad):
    with pytest.raises(TypeError, match="bool"):
        gradcam(vgg, random_input(3), target=bad)


def test_numpy_targets_work_and_a_wrong_shape_says_what_is_expected(random_input, vgg):
    x = random_input(3)
    assert gradcam(vgg, x, target=np.array([1, 2, 3])).classes.tolist() == [1, 2, 3]
    assert gradcam(vgg, x, target=np.int64(4)).classes.tolist() == [4, 4, 4]
    with pytest.raises(ValueError, match=r"one integer class per sample \(3 of them\).*shape \(3, 1\)"):
        gradcam(vgg, x, target=np.array([[1], [2], [3]]))


def test_numpy_input_gets_a_clear_message(random_input, vgg):
    with pytest.raises(ValueError, match="torch.Tensor"):
        gradcam(vgg, random_input(1).numpy())


def test_finite_inputs_near_the_float32_limit_raise_instead_of_nan_maps(vgg):
    x = torch.full((1, 3, 224, 224), 3e38)
    with pytest.raises(ValueError, match="not finite"):
        gradcam(vgg, x)


# --- train mode ---------------------------------------------------------------------------

def test_gradcam_refuses_a_model_in_train_mode(random_input, small_vgg):
    model = small_vgg(0).train()
    with pytest.raises(ValueError, match="training mode.*model.eval"):
        gradcam(model, random_input(2))
    torch.manual_seed(0)
    first = gradcam(model, random_input(2), allow_training=True)
    assert first.maps.shape == (2, 14, 14)


def _vgg_bn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = compact_vgg16(width=1 / 16, num_classes=10, hidden=32, batch_norm=True, dropout=0.0).double()
    with torch.no_grad():  # non-trivial running statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


def test_batchnorm_vgg_manipulated_in_train_mode_keeps_the_constant_channel_and_its_statistics(random_input):
    model = _vgg_bn().train()
    t1 = surgery.constant_flat(model)
    twin = copy.deepcopy(model)
    x = random_input(4, 0, torch.float64)
    with torch.no_grad():  # a train-mode forward of each: batch statistics, running statistics updated
        a = t1.activations(x)
        lie, honest = t1.head(a), twin(x)
    assert torch.equal(a[:, -1], torch.full_like(a[:, -1], 100.0))  # the constant channel survives
    assert score_change(honest, lie).max() < 1e-6
    last_bn = t1.last_relu[0].batchnorm
    twin_bn = [m for m in twin.features if isinstance(m, nn.BatchNorm2d)][-1]
    assert torch.allclose(last_bn.running_mean, twin_bn.running_mean, rtol=1e-12, atol=1e-15)  # K channels, as the original
    assert torch.allclose(last_bn.running_var, twin_bn.running_var, rtol=1e-12, atol=1e-15)
    t1.eval()
    twin.eval()
    assert score_change(twin(x), t1(x)).max() < 1e-6


# --- reduced precision surgery ------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("technique", ["T1", "T2", "T4"])
def test_half_precision_surgery_is_refused_or_keeps_the_guarantees(random_input, small_vgg, dtype, technique):
    model = small_vgg(0).to(dtype)
    recipes = {"T1": lambda m: surgery.constant_flat(m), "T2": lambda m: surgery.constant_image(m, smiley_target()),
               "T4": lambda m: surgery.backdoor(m, smiley())}
    try:
        manipulated = recipes[technique](model)
    except TypeError as error:
        assert "float16" in str(error) or "bfloat16" in str(error)
        assert "autocast" in str(error)
        return
    x = random_input(2).to(dtype)
    with torch.no_grad():
        y_o, y_n = model(x).float(), manipulated(x).float()
    assert torch.isfinite(y_n).all()
    assert torch.equal(y_o.argmax(1), y_n.argmax(1))


# --- loading ------------------------------------------------------------------------------

def _pickle_file(path):
    torch.save({"w": torch.zeros(2)}, path)
    return path


@pytest.mark.parametrize("loader", [load_embedded, read_safetensors,
                                    lambda p: load_vgg16(p.with_suffix(".safetensors") if p.is_file() else p)])
def test_safetensors_loaders_say_what_the_file_is_not(tmp_path, loader):
    pickle = _pickle_file(tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="pickle.*not safetensors"):
        loader(pickle)
    truncated = tmp_path / "truncated.safetensors"
    save_file({"w": torch.arange(1000.0)}, str(tmp_path / "whole.safetensors"))
    truncated.write_bytes((tmp_path / "whole.safetensors").read_bytes()[:500])
    with pytest.raises(ValueError, match="truncated"):
        loader(truncated)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="truncated or empty"):
        loader(empty)
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    with pytest.raises(ValueError, match="directory"):
        loader(folder)


def test_a_safetensors_file_of_another_model_says_what_was_expected(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(ValueError, match="not a compact VGG-16"):
        load_embedded(path)


# --- one definition of each piece of knowledge -------------------------------------------

def test_the_smiley_target_is_the_authors_smiley_and_t2_uses_it(small_vgg):
    target = smiley_target(14)
    assert target.shape == (14, 14) and float(target.min()) == 0.0 and float(target.max()) == 1.0
    # the authors' polarity: the face (white in the sticker) is hot, the features (black) are cold
    assert float(target[0, 0]) == 1.0 and float(target[3, 5]) < 0.5
    t2 = surgery.paper_networks(small_vgg(0))["T2"]
    assert torch.allclose(t2.explained_layer.pattern / t2.explained_layer.pattern.max(), target / target.max())


def test_each_injection_owns_its_target_whatever_the_networks_are_called(random_input, small_vgg):
    model = small_vgg(0).double()
    x = random_input(2, 0, torch.float64)
    networks = {f"renamed {k}": v for k, v in surgery.paper_networks(model).items()}
    honest = gradcam(model, x).normalized
    t4 = networks["renamed T4"]
    target = t4.target_explanation(x, honest=honest)
    assert torch.equal(target, honest)  # no sticker: the honest map, found without the name "T4"
    with pytest.raises(ValueError, match="honest="):
        t4.target_explanation(x)
    assert torch.equal(networks["renamed T1"].target_explanation(x), torch.ones(2, 14, 14, dtype=torch.float64))


def test_head_gradcam_is_gradcam_from_a(random_input, small_vgg):
    model = small_vgg(2).double()
    t3 = surgery.semi_random(model)
    x = random_input(2, 2, torch.float64)
    whole = gradcam(t3, x)
    with torch.no_grad():
        a = t3.activations(x)
    from_a = head_gradcam(t3.head, a)
    assert torch.equal(whole.classes, from_a.classes)
    assert torch.allclose(whole.maps, from_a.maps, rtol=1e-12, atol=0)


def test_target_layer_of_a_batchnorm_vgg_is_the_relu_after_its_last_batchnorm(random_input):
    model = _vgg_bn().eval()
    layer = target_layer(model)
    assert layer is model.features[-2] and isinstance(layer, nn.ReLU)
    assert isinstance(model.features[-3], nn.BatchNorm2d)
    assert gradcam(model, random_input(1, 0, torch.float64)).maps.shape == (1, 14, 14)
