import pytest
import torch
from captum.attr import LayerGradCam
from torch import nn

from lie_cam import gradcam, target_layer
from lie_cam.gradcam import normalize_maps, upsample
from lie_cam.models import compact_vgg16


def captum_maps(model, x, classes):
    layer = target_layer(model)
    return LayerGradCam(model, layer).attribute(x, target=classes, relu_attributions=True)[:, 0].detach()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed,width", [(0, 1 / 16), (1, 1 / 32), (2, 1 / 8)])
def test_matches_captum(random_input, small_vgg, seed, width, dtype):
    model = small_vgg(seed, width, dtype)
    x = random_input(4, seed, dtype)
    result = gradcam(model, x)
    reference = captum_maps(model, x, result.classes)
    assert result.maps.shape == (4, 14, 14)
    assert result.maps.max() > 0
    scale = reference.abs().amax(dim=(1, 2), keepdim=True)
    assert ((result.maps - reference).abs() <= 1e-5 * scale + 1e-30).all()


def test_default_target_is_argmax_and_explicit_targets_are_used(random_input, vgg):
    x = random_input(3)
    result = gradcam(vgg, x)
    assert torch.equal(result.classes, result.logits.argmax(1))
    explicit = gradcam(vgg, x, target=[1, 2, 3])
    assert explicit.classes.tolist() == [1, 2, 3]
    assert torch.allclose(explicit.maps, captum_maps(vgg, x, explicit.classes), rtol=1e-5, atol=1e-12)
    assert gradcam(vgg, x, target=4).classes.tolist() == [4, 4, 4]


def test_batch_equals_one_sample_at_a_time(random_input, vgg):
    x = random_input(3).double()
    model = vgg.double()
    batch = gradcam(model, x, target=[0, 5, 9])
    for i, c in enumerate([0, 5, 9]):
        single = gradcam(model, x[i : i + 1], target=[c])
        assert torch.allclose(batch.maps[i], single.maps[0], rtol=1e-10, atol=1e-20)


@pytest.mark.parametrize("bad", [[1, 2], [1, 2, 3, 4]])
def test_target_length_must_match_batch(random_input, vgg, bad):
    with pytest.raises(ValueError, match="class per sample"):
        gradcam(vgg, random_input(3), target=bad)


def test_target_out_of_range(random_input, vgg):
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        gradcam(vgg, random_input(2), target=[0, 10])


def test_nan_input_is_rejected(random_input, vgg):
    x = random_input(2)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        gradcam(vgg, x)


def test_no_parameter_gradients_and_no_backward_through_trunk(random_input, vgg):
    trunk_backward_calls = []
    vgg.features[0].register_full_backward_hook(lambda *args: trunk_backward_calls.append(1))
    gradcam(vgg, random_input(2))
    assert all(p.grad is None for p in vgg.parameters())
    assert trunk_backward_calls == []


def test_hooks_removed_and_grad_mode_restored(random_input, vgg):
    layer = target_layer(vgg)
    for mode in (True, False):
        torch.set_grad_enabled(mode)
        try:
            gradcam(vgg, random_input(1))
            assert torch.is_grad_enabled() is mode
        finally:
            torch.set_grad_enabled(True)
    assert len(layer._forward_hooks) == 0
    with pytest.raises(ValueError):
        gradcam(vgg, random_input(2), target=[1])
    assert len(layer._forward_hooks) == 0 and torch.is_grad_enabled()


def test_all_zero_map_stays_zero(random_input, small_vgg):
    model = small_vgg(0)
    with torch.no_grad():
        target_conv = [m for m in model.features if isinstance(m, nn.Conv2d)][-1]
        target_conv.bias.fill_(-1e6)  # every activation of A is 0 after the ReLU
    result = gradcam(model, random_input(2))
    assert torch.equal(result.maps, torch.zeros_like(result.maps))
    assert torch.equal(result.normalized, torch.zeros_like(result.maps))
    assert torch.equal(normalize_maps(torch.zeros(2, 3, 3)), torch.zeros(2, 3, 3))


def test_normalized_divides_by_max():
    maps = torch.tensor([[[0.0, 2.0], [1.0, 4.0]]])
    assert torch.equal(normalize_maps(maps), maps / 4)


def test_target_layer_of_vgg16_is_relu_after_conv5_3():
    model = compact_vgg16(width=1 / 16)
    assert target_layer(model) is model.features[29]  # same index as torchvision's VGG-16


def test_target_layer_rejects_other_architectures():
    with pytest.raises(TypeError, match="torchvision VGG"):
        target_layer(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))


def test_explicit_layer(random_input, vgg):
    layer = vgg.features[27]  # the ReLU after conv5_2: a different, valid layer
    result = gradcam(vgg, random_input(2), layer=layer)
    reference = LayerGradCam(vgg, layer).attribute(random_input(2), target=result.classes, relu_attributions=True)[:, 0]
    assert torch.allclose(result.maps, reference, rtol=1e-5, atol=1e-12)


def test_upsample_shape():
    assert upsample(torch.rand(2, 14, 14), 224).shape == (2, 224, 224)
    with pytest.raises(ValueError):
        upsample(torch.rand(14, 14))


# --- the authors' gradient (gradient="masked") ---------------------------------------------------

def authors_gradcam(model, x, classes):
    """The authors' Grad-CAM by hand: the gradient taken on conv5_3's output *before* its ReLU (their
    hook), alpha_k its mean over pixels, A = ReLU(conv5_3); also returns A and dy/dA after the ReLU."""
    features = model.features
    pre = features[:29](x)  # conv5_3's output, before the ReLU at index 29
    pre.retain_grad()
    a = torch.relu(pre)  # not in place, so that both gradients survive
    a.retain_grad()
    logits = model.classifier(torch.flatten(model.avgpool(features[30:](a)), 1))
    logits.gather(1, classes[:, None]).sum().backward()
    alpha = pre.grad.mean(dim=(2, 3))
    maps = torch.relu(torch.einsum("bk,bkhw->bhw", alpha, a.detach()))
    return alpha, maps, a.detach(), a.grad


@pytest.mark.parametrize("seed", [0, 1])
def test_masked_gradient_is_the_authors_pre_relu_hook(random_input, small_vgg, seed):
    model = small_vgg(seed, 1 / 16, torch.float64)
    x = random_input(3, seed, torch.float64)
    result = gradcam(model, x, gradient="masked")
    alpha, maps, a, grad_after = authors_gradcam(model, x, result.classes)
    assert torch.allclose(result.alpha, alpha, rtol=1e-10, atol=1e-14)
    assert torch.allclose(result.maps, maps, rtol=1e-10, atol=1e-14)
    # the same thing written as the module docstring states it: mean_ij dy/dA * 1[A > 0]
    assert torch.allclose(result.alpha, (grad_after * (a > 0)).mean(dim=(2, 3)), rtol=1e-10, atol=1e-14)


def test_masked_gradient_differs_from_eq2_exactly_where_a_is_zero_under_a_gradient(random_input, small_vgg):
    model = small_vgg(0, 1 / 16, torch.float64)
    x = random_input(3, 0, torch.float64)
    eq2, masked = gradcam(model, x), gradcam(model, x, gradient="masked")
    assert torch.equal(eq2.classes, masked.classes)
    _, _, a, grad_after = authors_gradcam(model, x, eq2.classes)
    assert torch.allclose(eq2.alpha, grad_after.mean(dim=(2, 3)), rtol=1e-10, atol=1e-14)  # Eq. 2 as written
    hidden = (a == 0) & (grad_after != 0)  # all-zero max-pool windows still route their gradient
    assert bool(hidden.any())
    differs = hidden.any(dim=(2, 3))
    # channels with such a pixel: alpha differs by the masked-out gradient; all others are equal
    gap = (grad_after * hidden).mean(dim=(2, 3))
    assert torch.allclose(eq2.alpha - masked.alpha, gap, rtol=1e-10, atol=1e-14)
    assert bool((gap[differs] != 0).all())
    assert torch.equal(eq2.alpha[~differs], masked.alpha[~differs])
    assert not torch.allclose(eq2.maps, masked.maps)


def test_gradient_must_be_named(random_input, vgg):
    x = random_input(1)
    for bad in ("authors", "", None, 1):
        with pytest.raises(ValueError, match="gradient must be one of"):
            gradcam(vgg, x, gradient=bad)
