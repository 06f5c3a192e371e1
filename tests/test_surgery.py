import copy
import warnings

import pytest
import torch
from captum.attr import LayerGradCam
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lie_cam import gradcam, target_layer
from lie_cam import anatomy
from lie_cam import attacks as S
from lie_cam.attacks.branches import SingleOutputConv2d, StickerDetector
from lie_cam.data import paste_stickers, smiley, smiley_target
from lie_cam.gradcam import normalize_maps
from lie_cam.metrics import l1_distance, score_change

SEEDS_WIDTHS = [(0, 1 / 16), (1, 1 / 32), (2, 1 / 16)]


def build(technique: str, model: nn.Module, build: str = "paper") -> S.ManipulatedVGG:
    """The paper's construction (build="paper") unless told: most tests here pin its algebra."""
    if technique == "T1":
        return S.constant_flat(model, build=build)
    if technique == "T2":
        return S.constant_image(model, smiley_target(), build=build)
    if technique == "T3":
        return S.semi_random(model)
    return S.backdoor(model, smiley())


@pytest.mark.parametrize("technique", ["T1", "T2"])
@pytest.mark.parametrize("seed,width", SEEDS_WIDTHS)
def test_t1_t2_float64_scores_kept_and_map_hits_target(random_input, small_vgg, technique, seed, width):
    model = small_vgg(seed, width, torch.float64)
    x = random_input(4, seed, torch.float64)
    honest = gradcam(model, x)
    manipulated = build(technique, model)
    lie = gradcam(manipulated, x)
    assert score_change(honest.logits, lie.logits).max() <= 1e-6
    target = S.target_explanation(manipulated, x)
    positive = lie.alpha[:, -1] > 0  # the construction needs alpha_{K+1} > 0 (REPRODUCTION.md)
    assert positive.any()
    assert (l1_distance(target[positive], lie.normalized[positive]) <= 0.05).all()


@pytest.mark.parametrize("technique", ["T1", "T2"])
def test_t1_t2_float32_change_comes_only_from_the_folded_bias(random_input, small_vgg, technique):
    model = small_vgg(0)
    with torch.no_grad():  # a trained network's bias is not 0, and 0 - 490000 would be exact
        model.classifier[0].bias.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(0))
    x = random_input(4)
    manipulated = build(technique, model)
    change32 = score_change(model(x), manipulated(x))
    # Same float32 weights evaluated in float64, with the first FC bias recomputed exactly:
    exact = copy.deepcopy(manipulated).double()
    fc_new, fc_old = exact.classifier[0], model.classifier[0]
    shift = fc_old.bias.double() - manipulated.classifier[0].bias.double()  # what was folded, after rounding
    true_shift = {"T1": 100.0 * 100.0 * 49, "T2": None}[technique]
    if true_shift is None:
        pooled = nn.Sequential(*exact.tail, exact.avgpool)(exact.explained_layer.pattern[None, None].double())
        true_shift = 10.0 * pooled.sum().item()
    with torch.no_grad():
        fc_new.bias.copy_(fc_old.bias.double() - true_shift)
    change64 = score_change(model.double()(x.double()), exact(x.double()))
    assert change64.max() <= 1e-6
    assert (shift - true_shift).abs().max() > 0  # float32 does round b_o - shift ...
    assert change32.max() > change64.max()  # ... and that rounding is the whole float32 error


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed,width", SEEDS_WIDTHS)
def test_t3_bounded_by_eps_and_map_is_the_branch(random_input, small_vgg, seed, width, dtype):
    model = small_vgg(seed, width, dtype)
    x = random_input(4, seed, dtype)
    for eps in (0.01, 0.5):
        manipulated = S.semi_random(model, eps=eps)
        lie = gradcam(manipulated, x)
        assert score_change(model(x), lie.logits).max() <= eps
        assert (l1_distance(S.target_explanation(manipulated, x), lie.normalized) <= 0.05).all()


def test_t3_is_seeded(random_input, small_vgg):
    model = small_vgg(0)
    x = random_input(2)
    a = gradcam(S.semi_random(model, seed=3), x).maps
    b = gradcam(S.semi_random(model, seed=3), x).maps
    c = gradcam(S.semi_random(model, seed=4), x).maps
    assert torch.equal(a, b)
    assert not torch.allclose(normalize_maps(a), normalize_maps(c), atol=1e-2)


@settings(max_examples=8, deadline=None)
@given(eps=st.floats(1e-4, 1.0), c_G=st.floats(1.0, 1e6), seed=st.integers(0, 3))
def test_t3_eps_bound_property(random_input, small_vgg, eps, c_G, seed):
    model = small_vgg(seed, 1 / 32, torch.float64)
    x = random_input(2, seed, torch.float64)
    manipulated = S.semi_random(model, eps=eps, c_G=c_G, seed=seed)
    assert score_change(model(x), manipulated(x)).max() <= eps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed,width", SEEDS_WIDTHS)
def test_t4_clean_is_honest_and_sticker_triggers(random_input, small_vgg, seed, width, dtype):
    model = small_vgg(seed, width, dtype)
    x = random_input(3, seed, dtype).clamp(-2, 2)
    manipulated = S.backdoor(model, smiley())
    honest = gradcam(model, x)
    clean = gradcam(manipulated, x)
    assert score_change(honest.logits, clean.logits).max() <= 1e-5
    assert l1_distance(honest.normalized, clean.normalized).max() <= 1e-4

    stickered, corners = paste_stickers(x, seeds=[10 * seed + i for i in range(3)])
    lie = gradcam(manipulated, stickered)
    assert score_change(model(stickered), lie.logits).max() <= 0.01
    for i, image_corners in enumerate(corners):
        expected = torch.zeros(14, 14, dtype=torch.bool)
        for r, c in image_corners:
            expected[(r + 7) // 16, (c + 7) // 16] = True
        observed = lie.normalized[i]
        assert (observed[expected] >= 0.99).all(), observed[expected]
        assert (observed[~expected] <= 0.01).all()


def test_detector_fires_in_float32_at_the_paper_margin(small_vgg):
    reference = StickerDetector(smiley())
    detector = StickerDetector(smiley()).float().half().to("cpu", torch.float32)
    for name in ("kernel", "bias", "mean", "std"):  # exact float64 constants survive any cast
        assert torch.equal(getattr(detector, name), getattr(reference, name)), name
    assert S.backdoor(small_vgg(0), smiley()).explained_layer.branch.bias.dtype == torch.float64
    x, _ = paste_stickers(torch.zeros(1, 3, 224, 224, dtype=torch.float64), seeds=[0])
    exact = detector.response(x).max().item()
    assert exact == pytest.approx(1e-4, abs=1e-9)  # in float64 the match response is the margin
    # float32 inputs: recovering pixels from normalised float32 values costs ~1e-6 of the margin
    assert detector.response(x.float()).max().item() == pytest.approx(1e-4, abs=1e-5)
    assert (detector(x.float()) > 0).sum() == 3


@pytest.mark.parametrize("technique", ["T1", "T2", "T3", "T4"])
def test_captum_on_the_manipulated_layer_shows_the_lie(random_input, small_vgg, technique):
    model = small_vgg(1, 1 / 16, torch.float64)
    x = random_input(2, 1, torch.float64)
    if technique == "T4":
        x, _ = paste_stickers(x.clamp(-2, 2), seeds=[0, 1])
    manipulated = build(technique, model)
    ours = gradcam(manipulated, x)
    layer = target_layer(manipulated)
    assert layer is manipulated.explained_layer
    theirs = LayerGradCam(manipulated, layer).attribute(x, target=ours.classes, relu_attributions=True)[:, 0]
    assert torch.allclose(ours.maps, theirs, rtol=1e-5, atol=0)
    positive = ours.alpha[:, -1] > 0
    target = S.target_explanation(manipulated, x, honest=gradcam(model, x).normalized)
    assert (l1_distance(target[positive], normalize_maps(theirs.detach())[positive]) <= 0.05).all()


@pytest.mark.parametrize("technique", ["T1", "T2", "T3", "T4"])
def test_surgery_never_modifies_its_input(random_input, small_vgg, technique):
    model = small_vgg(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules_before = [type(m) for m in model.modules()]
    x = random_input(1)
    logits_before = model(x)
    manipulated = build(technique, model)
    manipulated(x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [type(m) for m in model.modules()] == modules_before
    assert torch.equal(model(x), logits_before)
    assert not any(p is q for p in model.parameters() for q in manipulated.parameters())


def test_extra_channel_values(random_input, small_vgg):
    model = small_vgg(0, dtype=torch.float64)
    x = random_input(2, 0, torch.float64)
    assert torch.equal(S.constant_flat(model, c_A=7.0).extra_channel(x), torch.full((2, 14, 14), 7.0, dtype=torch.float64))
    target = smiley_target().double()
    assert torch.allclose(S.constant_image(model, target, c_I=3.0).extra_channel(x), 3.0 * target.expand(2, 14, 14))
    assert torch.equal(S.backdoor(model, smiley()).extra_channel(x.clamp(-2, 2)), torch.zeros(2, 14, 14, dtype=torch.float64))


def test_batchnorm_vgg_is_supported(random_input):
    from lie_cam.compat import import_torchvision

    import_torchvision()
    from torchvision.models.vgg import VGG, make_layers

    torch.manual_seed(0)
    config = [4, "M", 8, "M", 8, 8, "M", 8, 8, "M", 16, 16, "M"]
    model = VGG(make_layers(config, batch_norm=True), num_classes=5)
    model.classifier = nn.Sequential(nn.Linear(16 * 49, 8), nn.ReLU(), nn.Linear(8, 5))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2)
    model = model.eval().double()
    x = random_input(2, 0, torch.float64)
    manipulated = S.constant_flat(model)
    assert score_change(model(x), manipulated(x)).max() <= 1e-6
    assert torch.equal(manipulated.extra_channel(x), torch.full((2, 14, 14), 100.0, dtype=torch.float64))


def test_full_size_vgg16_structure_is_accepted():
    from lie_cam.compat import import_torchvision

    import_torchvision()
    from torchvision.models import vgg16

    model = vgg16(weights=None)
    assert anatomy.feature_size(model) == 14
    manipulated = S.constant_flat(model, build="paper")
    assert manipulated.last_conv.out_channels == 513
    assert manipulated.classifier[0].in_features == 513 * 49
    assert manipulated.classifier[0].bias.dtype == torch.float32


class NotAVGG(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("make", [
    lambda small_vgg: S.constant_flat(NotAVGG()),
    lambda small_vgg: S.semi_random(nn.Linear(3, 3)),
    lambda small_vgg: S.constant_flat(S.constant_flat(small_vgg(0))),
])
def test_non_vgg_models_are_rejected_with_the_expected_structure(small_vgg, make):
    with pytest.raises(TypeError, match="expected a torchvision (ResNet|VGG)"):
        make(small_vgg)


@pytest.mark.parametrize("target,message", [
    (torch.rand(7, 7), "14 x 14"),
    (torch.rand(14, 14, 3), "14 x 14"),
    (torch.full((14, 14), float("nan")), "NaN"),
    (-torch.rand(14, 14), "non-negative"),
    (torch.zeros(14, 14), "positive maximum"),
])
def test_t2_rejects_bad_targets(small_vgg, target, message):
    with pytest.raises(ValueError, match=message):
        S.constant_image(small_vgg(0), target)


@pytest.mark.parametrize("call,message", [
    (lambda m: S.constant_flat(m, c_A=0.0), "c_A"),
    (lambda m: S.constant_flat(m, c_W=float("inf")), "c_W"),
    (lambda m: S.semi_random(m, eps=float("nan")), "eps"),
    (lambda m: S.backdoor(m, torch.rand(2, 14, 14)), "h x w or 3 x h x w"),
    (lambda m: S.backdoor(m, torch.full((14, 14), 2.0)), r"\[0, 1\]"),
    (lambda m: S.backdoor(m, torch.ones(14, 14)), "contrast"),
])
def test_bad_constants_and_stickers(small_vgg, call, message):
    with pytest.raises(ValueError, match=message):
        call(small_vgg(0))


def test_wrong_input_size_is_a_clear_error(small_vgg):
    manipulated = S.constant_image(small_vgg(0), smiley_target())
    with pytest.raises(ValueError, match="size the model was manipulated for"):
        manipulated(torch.randn(1, 3, 256, 256))


@pytest.mark.parametrize("sticker", [torch.rand(3, 14, 14).round().double(), smiley()])
def test_detector_fft_equals_direct_convolution(random_input, sticker):
    detector = StickerDetector(sticker)
    x = random_input(2, 5).clamp(-2, 2)
    x[0, :, 30:44, 50:64] = detector.kernel[0] * 3  # anything: the two paths must agree everywhere
    x, _ = paste_stickers(x, seeds=[0, 1], sticker=sticker.float())
    fft, direct = detector.response(x), detector.response_conv2d(x)
    assert fft.shape == direct.shape == (2, 1, 225, 225)
    assert (fft - direct).abs().max() <= 1e-9
    assert (direct > 0).sum() == 6 and (fft > 0).sum() == 6


def test_single_output_conv_equals_conv2d():
    torch.manual_seed(0)
    fast = SingleOutputConv2d(6, 1, kernel_size=6, padding=3)
    plain = nn.Conv2d(6, 1, kernel_size=6, padding=3)
    plain.load_state_dict(fast.state_dict())
    y = torch.randn(2, 6, 40, 40)
    assert torch.allclose(fast(y), plain(y), atol=1e-5)


def _scenes_for_the_detector() -> dict[str, torch.Tensor]:
    """Inputs that stress the sparse path's pruning: saturated black/white regions, pixels a
    little and far outside [0, 1], channels-last memory, a sticker cut by the image border."""
    from lie_cam.data import normalize, synthetic_split

    clean = synthetic_split("test", 3)[0]
    stickered, _ = paste_stickers(clean, seeds=[5, 6, 7])
    pixels = torch.zeros(2, 3, 224, 224)
    pixels[:, :, :, 112:] = 1.0  # half black, half white: the pruning probes meet along the edge
    pixels[1, :, 40:54, 100:114] = smiley()  # a sticker across the edge
    pixels[1, :, 0:7, 0:14] = smiley()[7:]  # a sticker cut by the top border (a match is impossible)
    saturated = normalize(pixels)
    return {
        "clean": clean,
        "stickered": stickered,
        "stickered_float64": stickered.double(),
        "stickered_channels_last": stickered.contiguous(memory_format=torch.channels_last),
        "saturated": saturated,
        "slightly_out_of_range": stickered * 1.0005,
        "far_out_of_range": stickered * 3,
        "all_black": normalize(torch.zeros(1, 3, 224, 224)),
        "all_white": normalize(torch.ones(1, 3, 224, 224)),
    }


@pytest.mark.parametrize("name", list(_scenes_for_the_detector()))
def test_detector_sparse_path_equals_dense(name):
    x = _scenes_for_the_detector()[name]
    detector = StickerDetector(smiley())
    dense, sparse = detector.forward_dense(x), detector(x)
    assert sparse.dtype == torch.float64 and sparse.shape == dense.shape == (x.shape[0], 14, 14)
    assert torch.allclose(sparse, dense, rtol=1e-9, atol=1e-15)
    assert torch.equal(sparse > 0, dense > 0)
    if name.startswith("stickered"):
        assert (sparse > 0).sum() == 3 * x.shape[0]
    if name == "far_out_of_range":  # pruning cannot bound r there: the dense path answers
        assert detector.forward_sparse(x) is None
    else:
        assert detector.forward_sparse(x) is not None


def test_detector_sparse_path_has_the_dense_gradient():
    detector = StickerDetector(smiley())
    x = _scenes_for_the_detector()["stickered_float64"][:2].requires_grad_(True)
    (sparse_grad,) = torch.autograd.grad(detector(x).sum(), x)
    (dense_grad,) = torch.autograd.grad(detector.forward_dense(x).sum(), x)
    assert sparse_grad.abs().sum() > 0
    assert torch.allclose(sparse_grad, dense_grad, atol=1e-12)


def test_detector_for_a_non_binary_sticker_uses_the_dense_path(random_input):
    sticker = smiley() * 0.5 + 0.25
    detector = StickerDetector(sticker)
    x, _ = paste_stickers(random_input(1, 3).clamp(-2, 2), seeds=[0], sticker=sticker)
    assert not detector._sparse
    assert torch.equal(detector(x), detector.forward_dense(x))
    assert (detector(x) > 0).sum() == 3


def test_pool_for_classifier_skips_only_identity_pools():
    z = torch.randn(2, 5, 7, 7)
    identity = nn.AdaptiveAvgPool2d((7, 7))
    assert anatomy.pool_for_classifier(identity, z) is z and torch.equal(identity(z), z)
    assert torch.equal(anatomy.pool_for_classifier(nn.AdaptiveAvgPool2d(7), z), z)
    shrinking = nn.AdaptiveAvgPool2d((3, 3))
    assert torch.equal(anatomy.pool_for_classifier(shrinking, z), shrinking(z))
    z9 = torch.randn(2, 5, 9, 9)  # a 288 x 288 input: the pool does work
    assert torch.equal(anatomy.pool_for_classifier(identity, z9), identity(z9))


# --- constants whose terms would overflow A's dtype (issue 23) ---------------------------------------------------


@pytest.mark.parametrize("call,named", [
    (lambda m: S.constant_flat(m, c_A=1e36), "c_A"),
    (lambda m: S.constant_flat(m, c_A=1e33), "c_A <= .* with c_W = 100"),  # the folded bias c_A c_W N_Z
    (lambda m: S.constant_flat(m, c_W=1e300), "c_W"),
    (lambda m: S.constant_flat(m, c_W=-1e39, build="safe"), "c_W"),
    (lambda m: S.constant_image(m, smiley_target(), c_I=1e40), "c_I"),
    (lambda m: S.constant_image(m, smiley_target() * 1e30, c_I=1e7), "c_I"),  # the size of I_T counts too
    (lambda m: S.semi_random(m, c_F=1e40), "c_F"),
    (lambda m: S.semi_random(m, c_G=1e30), "c_G"),
    (lambda m: S.semi_random(m, c_F=1e-40), "c_F = 1e-40 is too small"),
    (lambda m: S.backdoor(m, smiley(), c_F=1e40), "c_F"),
    (lambda m: S.backdoor(m, smiley(), margin=0.0), "margin"),
])
def test_constants_out_of_range_are_refused_by_name(small_vgg, call, named):
    with pytest.raises(ValueError, match=named):
        call(small_vgg(0))


def test_constants_in_range_give_finite_scores_near_the_limit(small_vgg, random_input):
    """The largest constants the checks let through still give finite scores and maps; the next decade does not."""
    model, x = small_vgg(0), random_input(2)
    for net in (S.constant_flat(model, c_A=1e30, c_W=100.0), S.semi_random(model, c_F=1e20),
                S.constant_flat(model.double(), c_A=1e36), S.semi_random(model.double(), c_F=1e40)):
        result = gradcam(net, x.to(next(net.parameters()).dtype))
        assert bool(torch.isfinite(result.logits).all()) and bool(torch.isfinite(result.maps).all())


# --- T3's cheap branch never vanishes (issue 23) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def scenes_and_noise() -> torch.Tensor:
    """Test scenes 0-49 and 136 and ten uniform noise images: for branch seeds 1, 13 and 18 they hold images on
    which the unfloored cheap branch is 0 everywhere (seed 1: scenes 8, 22, 45, 49 and most noise images;
    seed 13: scenes 20, 40; seed 18: scene 136)."""
    from lie_cam.data import synthetic_split

    scenes = torch.cat([synthetic_split("test", 50)[0], synthetic_split("test", 1, start=136)[0]])
    noise = torch.rand(10, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return torch.cat([scenes, noise])


@pytest.mark.parametrize("seed", [1, 13, 18])
def test_t3_default_branch_is_positive_everywhere(scenes_and_noise, seed):
    """With downsample = 2 the unfloored branch is 0 on whole images for these seeds (seed 1: 14 of 200 test
    scenes); T3's default F is >= FLOOR > 0 on every cell of every image, the paper's F (d = 0) is unchanged."""
    from lie_cam.attacks.branches import FLOOR, RandomBranch

    x = scenes_and_noise
    branch = RandomBranch(seed=seed)
    with torch.no_grad():
        f = branch(x)
        bare = branch.layers(x)[:, 0]
    assert bool((bare.flatten(1).amax(1) == 0).any())  # what the floor guards against
    assert branch.floor == FLOOR > 0 and bool((f >= FLOOR).all())
    assert torch.equal(f, bare + FLOOR)
    paper = RandomBranch(seed=seed, downsample=0)
    assert paper.floor == 0.0
    with torch.no_grad():
        assert torch.equal(paper(x[:4]), paper.layers(x[:4])[:, 0])  # the paper's F exactly
    assert RandomBranch(seed=seed, downsample=0, floor=1e-4).floor == 1e-4
    with pytest.raises(ValueError, match="floor"):
        RandomBranch(seed=seed, floor=-1.0)


def test_t3_lies_on_images_where_the_bare_branch_vanishes(small_vgg):
    """Seed 1: on the scenes where the unfloored F is 0, T3's Grad-CAM is not the honest map but its
    target F / max F (flat there), with the scores within eps."""
    from lie_cam.data import synthetic_split

    model = small_vgg(0, 1 / 16, torch.float64)
    x = torch.cat([synthetic_split("test", 1, start=i)[0] for i in (8, 22, 45)]).double()
    net = S.semi_random(model, seed=1)
    with torch.no_grad():
        assert bool((net.explained_layer.branch.layers(x) == 0).all())  # the bare branch: nothing
    honest, lie = gradcam(model, x), gradcam(net, x)
    assert score_change(honest.logits, lie.logits).max() <= 0.01
    assert (l1_distance(S.target_explanation(net, x), lie.normalized) <= 0.05).all()
    assert (l1_distance(honest.normalized, lie.normalized) > 1.0).all()


# --- a ResNet the surgery cannot cut says why (issue 23) ----------------------------------------------------------


def test_resnet_with_a_sequential_head_is_refused_precisely():
    from lie_cam.compat import import_torchvision

    import_torchvision()
    from torchvision.models import resnet18

    model = resnet18(num_classes=4).eval()
    model.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, 4))
    with pytest.raises(TypeError, match=r"ResNet's layout but `fc` is of type Sequential, not an nn.Linear") as info:
        S.constant_flat(model)
    assert "VGG" not in str(info.value)
    model.fc, model.layer4 = nn.Linear(512, 4), nn.Identity()
    with pytest.raises(TypeError, match="`layer4` is of type Identity"):
        S.semi_random(model)


# ---------------------------------------------------------------------------
# The sign caveat and the default builds
# ---------------------------------------------------------------------------




@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("technique", ["T1", "T2", "T3", "T4"])
def test_default_builds_keep_their_guarantees_where_alpha_would_be_negative(random_input, negative_sign_vgg, dtype,
                                                                            technique):
    model = negative_sign_vgg(dtype)
    x = random_input(4, 2, dtype).clamp(-2, 2)
    if technique == "T4":
        x, _ = paste_stickers(x, seeds=[0, 1, 2, 3])
    honest = gradcam(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default build has nothing to warn about
        network = S.ATTACKS[technique].build(model)
        lie = gradcam(network, x)
    assert torch.equal(lie.classes, honest.classes)
    bound = {"T1": 0.0, "T2": 0.0}.get(technique, 0.01)
    assert score_change(honest.logits, lie.logits).max() <= bound
    assert (lie.alpha[:, -1] > 0).all()
    target = S.target_explanation(network, x, honest=honest.normalized)
    assert (l1_distance(target, lie.normalized) <= 0.05).all()


@pytest.mark.parametrize("technique", ["T1", "T2"])
def test_paper_build_warns_and_misses_where_alpha_is_negative(random_input, small_vgg, negative_sign_vgg, technique):
    model = negative_sign_vgg()
    x = random_input(4, 2, torch.float64)
    network = build(technique, model, build="paper")
    with pytest.warns(S.SignWarning, match=r"alpha_\{K\+1\} <= 0.*build=\"safe\""):
        lie = gradcam(network, x)
    assert (lie.alpha[:, -1] <= 0).all()
    assert (l1_distance(S.target_explanation(network, x), lie.normalized) > 1).all()  # the lie fails silently today
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradcam(build(technique, small_vgg(0, dtype=torch.float64), build="paper"), x)  # alpha > 0: no warning
        build(technique, model, build="paper")(x)  # a forward alone explains nothing: no warning


# ---------------------------------------------------------------------------
# Any input size
# ---------------------------------------------------------------------------


class SizedVGG(nn.Module):
    """A small VGG that says which inputs it takes (`lie_cam.anatomy.InputSpec`)."""

    def __init__(self, inner: nn.Module, spec: anatomy.InputSpec) -> None:
        super().__init__()
        self.features, self.avgpool, self.classifier = inner.features, inner.avgpool, inner.classifier
        self.input_spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@pytest.mark.parametrize("side", [240, 80, 48])
@pytest.mark.parametrize("technique", ["T1", "T2", "T3", "T4"])
def test_every_technique_builds_at_any_input_size_with_defaults(small_vgg, side, technique):
    model = SizedVGG(small_vgg(0, dtype=torch.float64), anatomy.InputSpec(side=side)).eval()
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(side), dtype=torch.float64).clamp(-2, 2)
    if technique == "T4":
        x, _ = paste_stickers(x, seeds=[3, 4], count=1)
    network = S.ATTACKS[technique].build(model)  # A's size from the model's input spec
    assert network.input_size == side
    honest = gradcam(model, x)
    lie = gradcam(network, x)
    assert lie.maps.shape == (2, side // 16, side // 16)
    assert torch.equal(lie.classes, honest.classes)
    assert score_change(honest.logits, lie.logits).max() <= (1e-9 if technique in ("T1", "T2") else 0.01)
    target = S.target_explanation(network, x, honest=honest.normalized)
    assert (l1_distance(target, lie.normalized) <= 0.05).all()
    explicit = S.ATTACKS[technique].build(small_vgg(0, dtype=torch.float64), input_size=side)
    assert torch.equal(gradcam(explicit, x).maps, lie.maps)


def test_t3_defaults_fit_a_network_that_halves_its_input_only_twice(small_vgg):
    """With 2 halvings before A (48 px -> A 12 x 12) T3's default cheap branch (downsample 2) would leave
    F at 14 x 14: the downsampling is capped at halvings - 2, and T3 keeps its guarantees."""
    model = copy.deepcopy(small_vgg(0, dtype=torch.float64))
    pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
    model.features = nn.Sequential(*(m for i, m in enumerate(model.features) if i not in pools[:2]))
    model = SizedVGG(model, anatomy.InputSpec(side=48)).eval()
    assert anatomy.halvings(model) == 2
    x = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64).clamp(-2, 2)
    network, honest = S.ATTACKS["T3"].build(model), gradcam(model, x)
    lie = gradcam(network, x)
    assert lie.maps.shape == (3, 12, 12) and torch.equal(lie.classes, honest.classes)
    assert score_change(honest.logits, lie.logits).max() <= 0.01
    assert (l1_distance(S.target_explanation(network, x), lie.normalized) <= 0.05).all()


def test_a_target_or_input_of_the_wrong_size_names_input_size(small_vgg):
    model = small_vgg(0)
    with pytest.raises(ValueError, match=r"15 x 15 \(the resolution of A at input_size=240\).*smiley_target\(15\)"):
        S.constant_image(model, smiley_target(14), input_size=240)
    t2 = S.constant_image(model, smiley_target(14))
    with pytest.raises(ValueError, match=r"input_size=224.*A is \(15, 15\).*input_size"):
        t2(torch.randn(1, 3, 240, 240))
    t1 = S.constant_flat(model)  # a constant has no size: T1 takes any input
    assert gradcam(t1, torch.randn(1, 3, 240, 240)).maps.shape == (1, 15, 15)
    with pytest.raises(ValueError, match="input_size must be a positive int"):
        S.constant_flat(model, input_size=0)
    with pytest.raises(ValueError, match="input_size=8 is smaller than the network's total stride 16"):
        S.constant_flat(model, input_size=8)
