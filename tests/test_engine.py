import pytest
import torch

from conftest import random_input, small_vgg
from lie_cam import surgery as S
from lie_cam.data import paste_stickers, smiley
from lie_cam.engine import Evaluator, evaluate_separately


def networks(model):
    return {
        "T1": S.constant_flat(model),
        "T2": S.constant_image(model, torch.rand(14, 14, generator=torch.Generator().manual_seed(0))),
        "T3": S.semi_random(model),
        "T4": S.backdoor(model, smiley()),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1])
def test_engine_equals_each_network_on_its_own(seed, dtype):
    model = small_vgg(seed, 1 / 16, dtype)
    nets = networks(model)
    x = random_input(4, seed, dtype).clamp(-2, 2)
    for batch in (x, paste_stickers(x, seeds=[1, 2, 3, 4])[0]):
        shared = Evaluator(model, nets).run(batch)
        alone = evaluate_separately(model, nets, batch)
        assert list(shared) == ["original", "T1", "T2", "T3", "T4"]
        for name in alone:
            assert torch.equal(shared[name].classes, alone[name].classes), name
            assert torch.allclose(shared[name].logits, alone[name].logits, rtol=1e-6, atol=1e-6), name
            scale = alone[name].maps.amax(dim=(1, 2), keepdim=True).clamp_min(1e-30)
            assert ((shared[name].maps - alone[name].maps).abs() <= 1e-5 * scale).all(), name


def test_engine_subset_and_errors():
    model = small_vgg(0)
    nets = networks(model)
    evaluator = Evaluator(model, nets)
    assert list(evaluator.run(random_input(1), names=["original", "T4"])) == ["original", "T4"]
    with pytest.raises(ValueError, match="unknown networks"):
        evaluator.run(random_input(1), names=["T5"])
    with pytest.raises(ValueError, match="share the original's trunk"):
        Evaluator(small_vgg(1), nets)
    with pytest.raises(TypeError, match="lie_cam.surgery"):
        Evaluator(model, {"T1": small_vgg(0)})


def test_bf16_autocast_keeps_every_manipulation():
    """Under bf16 autocast (here on CPU) the large constants stay in float32/float64, so the lies hold."""
    model = small_vgg(2, 1 / 16)
    nets = networks(model)
    x = random_input(3, 2).clamp(-2, 2)
    exact = Evaluator(model, nets).run(x)
    low = Evaluator(model, nets, autocast_dtype=torch.bfloat16).run(x)
    for name in ["T1", "T2", "T3"]:
        target = S.target_explanation(nets[name], x)
        positive = low[name].alpha[:, -1] > 0
        assert positive.any()
        assert ((low[name].normalized - target).abs().sum(dim=(1, 2))[positive] <= 0.05).all(), name
    # T1/T2 still preserve the scores up to the bf16 trunk's own rounding, not by 490000-sized errors:
    for name in ["T1", "T2", "T3", "T4"]:
        change = (low[name].logits - low["original"].logits).abs().max()
        assert change <= 0.05, (name, change)
    stickered, corners = paste_stickers(x, seeds=[7, 8, 9])
    lie = Evaluator(model, nets, autocast_dtype=torch.bfloat16).run(stickered, names=["T4"])["T4"]
    for i, image_corners in enumerate(corners):
        for r, c in image_corners:
            assert lie.normalized[i, (r + 7) // 16, (c + 7) // 16] >= 0.99
    assert exact["original"].logits.dtype == low["original"].logits.dtype == torch.float32
