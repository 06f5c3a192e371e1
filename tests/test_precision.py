"""Reduced precision: the TF32 emulation, the precision rows (predicted against measured), the safe
build for float16/bfloat16 models and the sign failure."""

import math

import pytest
import torch
from torch.nn import functional as F

from lie_cam import gradcam
from lie_cam.gradcam import head_gradcam
from lie_cam.models import compact_resnet
from lie_cam.anatomy import cut_at_a
from lie_cam.experiments import precision as P
from lie_cam import attacks as S
from lie_cam.cli import main as cli_main
from lie_cam.data import smiley_target


@pytest.fixture(scope="module")
def tiny_vgg(small_vgg):
    """tiny_vgg(seed, dtype): a 1/32-wide VGG-16 whose head has PyTorch's default init and a non-zero FC1 bias."""
    def build(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        model = small_vgg(seed, 1 / 32, torch.float32, hidden=16)
        for layer in model.classifier:  # PyTorch's default init, as training starts: the head passes r's error on
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()
        with torch.no_grad():  # a trained network's bias is not 0 (0 - 490000 would be exact)
            model.classifier[0].bias.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(seed))
        return model.to(dtype)

    return build


def test_round_to_tf32_keeps_ten_mantissa_bits_to_nearest_even():
    x = torch.tensor([1 + 2**-10, 1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-12, -(1 + 3 * 2**-11), 65504.0, 1e-30])
    r = P.round_to_tf32(x)
    assert r.tolist()[:5] == [1 + 2**-10, 1.0, 1 + 2**-9, 1.0, -(1 + 2**-9)]
    assert bool(((r.view(torch.int32) & 0x1FFF) == 0).all())
    y = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert ((P.round_to_tf32(y) - y).abs() <= y.abs() * 2**-11).all()


def test_tf32_emulation_rounds_multiplicands_not_the_bias():
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(4, 8, generator=g), torch.randn(3, 8, generator=g), torch.randn(3, generator=g) * 1e5
    with P.tf32_emulation():
        emulated = F.linear(x, w, b)
    assert torch.equal(emulated, F.linear(P.round_to_tf32(x), P.round_to_tf32(w), b))
    assert not torch.equal(emulated, F.linear(x, w, b))
    conv = torch.nn.Conv2d(2, 2, 3)
    z = torch.randn(1, 2, 5, 5, generator=g, requires_grad=True)
    with P.tf32_emulation():
        out = conv(z)
    out.sum().backward()  # the straight-through rounding keeps autograd working
    assert torch.equal(out.detach(), F.conv2d(P.round_to_tf32(z.detach()), P.round_to_tf32(conv.weight.detach()), conv.bias.detach()))
    assert z.grad is not None


def test_ulp_is_the_spacing_of_the_format():
    assert P.ulp(490_000, "float32") == pytest.approx(0.03125)
    assert P.ulp(490_000, "bf16") == 2048
    assert P.ulp(490_000, "tf32") == 256
    assert P.ulp(1.5, "float64") == 2.0**-52
    assert P.predicted_score_change("fp16", "paper", "T1", 490_000.0)[0] == "overflow"
    assert P.predicted_score_change("tf32", "paper", "T1", 490_000.0)[0] == pytest.approx(0.03125)


@pytest.mark.parametrize("arch", ["vgg", "resnet"])
def test_explain_from_the_shared_trunk_equals_gradcam(tiny_vgg, random_input, arch):
    model = tiny_vgg(0, torch.float64) if arch == "vgg" else compact_resnet(4).eval().double()
    x = random_input(2, 0, torch.float64)
    cut = cut_at_a(model)
    network = S.constant_flat(model)
    with torch.no_grad():
        a = cut.to_a(network.trunk(x))
    honest, reference = head_gradcam(cut.head, a), gradcam(model, x)
    assert torch.allclose(honest.maps, reference.maps, rtol=1e-12, atol=1e-12)
    assert torch.equal(honest.logits, reference.logits)
    for network in S.paper_networks(model).values():
        result, logits, extra, error = P.explain_from_trunk(network, network.trunk(x), x, lambda: torch.no_grad().__class__())
        assert error is None
        reference = gradcam(network, x)
        assert torch.allclose(result.maps, reference.maps, rtol=1e-12, atol=1e-12)
        assert torch.equal(logits, reference.logits)
        assert torch.equal(extra, network.extra_channel(x))


def test_precision_rows_predicted_against_measured_on_a_tiny_model(tiny_vgg, random_input):
    model = tiny_vgg(0)
    x = random_input(3, 0)
    labels = model(x).argmax(1)
    settings = (("float64", torch.float64, "cast model"), ("float32", torch.float32, "cast model"),
                ("bf16", torch.bfloat16, "cast model"), ("fp16", torch.float16, "autocast"))
    rows = {(r["setting"], r["build"], r["attack"]): r for r in P.precision_table(model, x, labels, settings)}
    assert len(rows) == len(settings) * 2 * len(P.CASES)
    for key, r in rows.items():
        setting, build, attack = key
        assert {"accuracy", "accuracy_change", "max_score_change", "predicted_score_change", "l1_to_target",
                "flips", "mode"} <= set(r)
        predicted, measured = r["predicted_score_change"], r["max_score_change"]
        assert (predicted == "overflow") == bool(r["overflow"]), key  # an inf/NaN inside exactly where predicted
        if predicted == "overflow":
            pass
        elif attack in ("T1", "T2") and build == "paper":  # at most the rounding of the cancelled constant
            assert measured <= 4 * predicted, key
        elif build == "safe" and attack in ("T1", "T2", "T4-clean"):
            assert measured == 0.0, key  # the float64 fold cancels exactly, in every format
        else:  # T3, T4-sticker: within eps (plus the rounding of y + G in the format)
            assert measured <= predicted + P.ulp(100, setting), key
    assert rows["float32", "paper", "T1"]["cancelled_constant"] == 100 * 100 * 49
    t1 = {setting: rows[setting, "paper", "T1"]["max_score_change"] for setting in ("float64", "float32", "bf16")}
    assert 0 < t1["float64"] < 1e-6 < t1["float32"] and t1["bf16"] > 100 * t1["float32"]  # grows with the ulp


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_models_are_refused_by_the_paper_build_and_kept_by_the_safe_build(tiny_vgg, random_input, dtype):
    model = tiny_vgg(1, dtype)
    with pytest.raises(TypeError, match='build="safe"'):
        S.constant_flat(model, build="paper")
    x = random_input(2, 1, dtype)
    with torch.no_grad():
        y = model(x)
        for name, network in S.paper_networks(model, build="safe").items():
            out = network(x)
            assert torch.isfinite(out).all(), name
            if name in ("T1", "T2", "T4"):
                assert torch.equal(out, y), name  # exactly the reduced-precision original's scores
            else:
                assert (out.double() - y.double()).abs().max() <= 0.01 + P.ulp(y.abs().max().item(), "bf16")
    lie = gradcam(S.constant_flat(model, build="safe"), x)
    assert torch.isfinite(lie.maps).all() and (lie.alpha[:, -1] > 0).all()


def test_sign_failure_happens_over_classes_and_the_safe_build_removes_it(tiny_vgg, random_input):
    model = tiny_vgg(2, torch.float64)
    x = random_input(3, 2, torch.float64)
    paper, safe = P.sign_failure(model, x, "paper"), P.sign_failure(model, x, "safe")
    assert 0 < paper["rate_all_classes"] < 1
    failed = paper["alpha"] <= 0
    assert (paper["l1"][failed] >= 0.5 * 196).all()  # the dominant term is negative: the flat target is lost
    assert safe["rate_all_classes"] == 0
    n_z, n_a = 49, 196
    assert torch.allclose(safe["alpha"], torch.full_like(safe["alpha"], 100.0 * n_z / n_a))
    assert (safe["l1"] <= 0.05 * 196).all()


def test_safe_build_t2_float32_is_exact_where_the_paper_build_rounds(tiny_vgg, random_input):
    model = tiny_vgg(3)
    x = random_input(2, 3)
    with torch.no_grad():
        y = model(x)
        paper = S.constant_image(model, smiley_target(14), build="paper")(x)
        safe = S.constant_image(model, smiley_target(14), build="safe")(x)
    assert torch.equal(safe, y)
    assert (paper - y).abs().max() > 0


def test_cli_validates_before_any_work(tmp_path, capsys):
    assert cli_main(["precision", "--out", str(tmp_path / "p"), "--limit", "0"]) == 2
    assert "positive" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli_main(["precision", "--out", str(blocker), "--limit", "2"]) == 2
    assert not math.isnan(P.ulp(0.0, "fp16"))


def test_sign_failure_at_another_input_size(tiny_vgg):
    model = tiny_vgg(2, torch.float64)
    x = torch.randn(2, 3, 80, 80, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    safe = P.sign_failure(model, x, "safe", input_size=80)  # A is 5 x 5
    assert safe["rate_all_classes"] == 0 and (safe["l1"] <= 0.05 * 25).all()
    assert torch.allclose(safe["alpha"], torch.full_like(safe["alpha"], 100.0 * 49 / 25))  # c_W N_Z / N_A
    assert P.sign_failure(model, x, "paper")["n_images"] == 2  # input_size defaults to x's side
    with pytest.raises(ValueError, match=r"input_size=224 but x is \(80, 80\)"):
        P.sign_failure(model, x, input_size=224)


def test_tf32_prediction_counts_the_rounding_of_t2s_grey_levels(small_vgg):
    """TF32 rounds the first Linear's multiplicands to 10 bits: T1's constant c_A = 100 is held exactly, T2's
    grey levels c_I I_T are not, and the bias -C does not cancel that rounding; the tf32 prediction adds it."""
    model = small_vgg(0)
    t1, t2 = (S.ATTACKS[name].build(model, build="paper") for name in ("T1", "T2"))
    assert P.tf32_multiplicand_rounding(t1) == 0.0
    rounding = P.tf32_multiplicand_rounding(t2)
    pattern = t2.explained_layer.pattern.double()
    with torch.no_grad():
        z = t2.pooled_features(pattern[None, None])
    c_W = float(t2.classifier[0].weight[0, -1])
    assert rounding == pytest.approx(abs(c_W * (z - P.round_to_tf32(z.float()).double()).sum().item()), rel=1e-6)
    assert rounding > 0
    constant = P.cancelled_constant(t2)
    predicted, basis = P.predicted_score_change("tf32", "paper", "T2", constant, multiplicands=rounding)
    assert predicted == P.ulp(constant, "float32") + rounding and "grey" not in basis and "rounding" in basis
    assert P.tf32_multiplicand_rounding(S.ATTACKS["T2"].build(model)) is None  # the safe build folds nothing
