import copy

import pytest
import torch
from torch import nn

from lie_cam import attacks as S
from lie_cam.data import paste_stickers, smiley
from lie_cam.experiments.engine import Evaluator, evaluate_separately


def networks(model):
    return S.paper_networks(model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1])
def test_engine_equals_each_network_on_its_own(random_input, small_vgg, seed, dtype):
    model = small_vgg(seed, 1 / 16, dtype)
    nets = networks(model)
    x = random_input(4, seed, dtype).clamp(-2, 2)
    stickered = paste_stickers(x, seeds=[1, 2, 3, 4])[0]
    evaluator = Evaluator(model, nets)
    assert evaluator.shared == ["T1", "T2", "T3", "T4"] and evaluator.alone == []
    clean_pair, sticker_pair = evaluator.run_split(torch.cat([x, stickered]), 4, second_names=["original", "T4"])
    assert list(sticker_pair) == ["original", "T4"]
    for batch, pair in ((x, clean_pair), (stickered, sticker_pair)):
        shared = evaluator.run(batch)
        alone = evaluate_separately(model, nets, batch)
        assert list(shared) == ["original", "T1", "T2", "T3", "T4"]
        for name in alone:
            assert_same(shared[name], alone[name], name)
            if name in pair:
                assert_same(pair[name], alone[name], name)
                assert (pair[name].extra is None) == (name == "original")


def assert_same(ours, reference, name):
    assert torch.equal(ours.classes, reference.classes), name
    assert torch.allclose(ours.logits, reference.logits, rtol=1e-6, atol=1e-6), name
    scale = reference.maps.amax(dim=(1, 2), keepdim=True).clamp_min(1e-30)
    assert ((ours.maps - reference.maps).abs() <= 1e-5 * scale).all(), name
    assert torch.allclose(ours.alpha, reference.alpha, rtol=1e-5, atol=1e-6 * reference.alpha.abs().max()), name


def test_engine_subset_and_errors(random_input, small_vgg):
    model = small_vgg(0)
    nets = networks(model)
    evaluator = Evaluator(model, nets)
    assert list(evaluator.run(random_input(1), names=["original", "T4"])) == ["original", "T4"]
    with pytest.raises(ValueError, match="unknown networks"):
        evaluator.run(random_input(1), names=["T5"])
    with pytest.raises(ValueError, match="share the original's trunk"):
        Evaluator(small_vgg(1), nets)
    with pytest.raises(TypeError, match="lie_cam.attacks"):
        Evaluator(model, {"T1": "not a model"})
    with pytest.raises(ValueError, match="reserved"):
        Evaluator(model, {"original": nets["T1"]})


class WithoutActivationsFrom(nn.Module):
    """A manipulated model the engine cannot split (as a surgery on another architecture would be)."""

    def __init__(self, network):
        super().__init__()
        self.network = network
        self.explained_layer = network.explained_layer

    def forward(self, x):
        return self.network(x)

    def target_explanation(self, x=None, honest=None, extra=None):
        return self.network.target_explanation(x, honest=honest, extra=extra)


def test_networks_without_activations_from_are_evaluated_on_their_own(random_input, small_vgg):
    model = small_vgg(3)
    nets = {"T1": S.constant_flat(model), "T4": WithoutActivationsFrom(S.backdoor(model, smiley())).eval(),
            "plain": small_vgg(4)}
    evaluator = Evaluator(model, nets)
    assert evaluator.shared == ["T1"] and evaluator.alone == ["T4", "plain"]
    x = random_input(2, 3).clamp(-2, 2)
    stickered = paste_stickers(x, seeds=[5, 6])[0]
    clean, sticker = evaluator.run_split(torch.cat([x, stickered]), 2, second_names=["original", "T4"])
    for batch, results in ((x, clean), (stickered, sticker)):
        reference = evaluate_separately(model, nets, batch, names=list(results))
        for name in results:
            assert_same(results[name], reference[name], name)
    assert clean["T4"].extra is None and clean["T1"].extra is not None


def test_an_original_that_is_not_a_torchvision_vgg_falls_back_to_gradcam(random_input, small_vgg):
    model = small_vgg(5)
    nets = {"T1": S.constant_flat(model), "T3": S.semi_random(model)}
    odd = copy.deepcopy(model)
    odd.classifier = nn.Sequential(nn.Identity(), *odd.classifier)  # split_vgg refuses it, Grad-CAM does not
    evaluator = Evaluator(odd, nets)
    assert evaluator.parts is None and evaluator.shared == [] and evaluator.alone == ["T1", "T3"]
    x = random_input(2, 5).clamp(-2, 2)
    results = evaluator.run(x)
    reference = evaluate_separately(odd, nets, x)
    for name in reference:
        assert_same(results[name], reference[name], name)


def test_bf16_autocast_keeps_every_manipulation(random_input, small_vgg):
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


def test_t3_branch_at_lower_resolution_keeps_the_paper_weights(random_input):
    """RandomBranch(downsample=d) runs the paper's two seeded 6x6 convolutions on the input averaged
    over 2^d x 2^d cells (d = 0: the paper's F at 225 x 225); every d gives a 14 x 14 map F >= 0."""
    from lie_cam.attacks.branches import CellMean, RandomBranch

    x = random_input(2, 7)
    assert torch.allclose(CellMean(4)(x), nn.AvgPool2d(2)(nn.AvgPool2d(2)(x)), atol=1e-6)
    paper, cheap = RandomBranch(seed=5, downsample=0), RandomBranch(seed=5)
    paper_convs = [m for m in paper.layers if isinstance(m, nn.Conv2d)]
    cheap_convs = [m for m in cheap.layers if isinstance(m, nn.Conv2d)]
    assert all(torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) for a, b in zip(paper_convs, cheap_convs))
    assert paper.layers[:2](x).shape[-2:] == (225, 225)  # the paper's first convolution at full resolution
    for branch in (paper, cheap, RandomBranch(seed=5, downsample=1)):
        with torch.no_grad():
            f = branch(x)
        assert f.shape == (2, 14, 14) and bool((f >= 0).all()) and bool((f.flatten(1).amax(1) > 0).all())
    with pytest.raises(ValueError, match="downsample"):
        RandomBranch(downsample=5)
