import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import lie_cam.experiments.engine
from lie_cam.data import smiley_7x7, smiley_target
from lie_cam.metrics import summarize
from lie_cam.experiments.report import OUTPUT_FILES
from lie_cam.experiments.reproduce import TableTally, run_reproduction, tf32_scope


@pytest.fixture(scope="module")
def reproduction(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    return run_reproduction(profile="embedded", limit=60, batch_size=30, device="cpu", out=out, progress=False,
                            workers=0), out


def test_writes_every_file(reproduction):
    _, out = reproduction
    for name in OUTPUT_FILES:
        assert (out / name).stat().st_size > 0, name
    table1 = (out / "table1.md").read_text()
    assert "0.71592" in table1 and "T3" in table1  # the paper's numbers beside ours
    run = json.loads((out / "reproduce.json").read_text())
    assert run["world_size"] == 1 and run["images_per_rank"] == [60] and run["settings"]["limit"] == 60


def test_results_json_rows(reproduction):
    _, out = reproduction
    rows = json.loads((out / "results.json").read_text())
    keys = {(r["network"], r["data"]) for r in rows}
    assert keys == {("original", "clean"), ("T1", "clean"), ("T2", "clean"), ("T3", "clean"), ("T4", "clean"),
                    ("original", "sticker"), ("T4", "sticker")}
    for row in rows:
        assert set(row) >= {"network", "data", "accuracy", "score_change", "l1", "n", "pointing"}
        assert row["n"] == 60
        if row["network"] == "original":
            assert row["score_change"] is None and row["l1"] is None


def test_the_papers_guarantees_hold(reproduction):
    result, _ = reproduction
    original = result.row("original")
    n = original["n"]
    for name in ("T1", "T2"):
        assert abs(result.row(name)["accuracy"] - original["accuracy"]) <= 1 / n + 1e-12
    assert result.row("T3")["score_change_max"] <= 0.01
    assert result.row("T4")["score_change_max"] <= 1e-5
    assert result.row("T4")["l1"] <= 1e-4
    assert result.row("T4", "sticker")["accuracy"] == result.row("original", "sticker")["accuracy"]
    # the honest explanation points at the object; T3's lie does not, nor T4's with stickers
    # (T1's flat map and T2's face, 1 on most of the map, keep the honest ripple on top of their
    # plateau, so their argmax says little; their L1 does)
    assert original["pointing"] >= 0.75
    assert result.row("T3")["pointing"] < original["pointing"] - 0.3
    assert result.row("T4", "sticker")["pointing"] < result.row("original", "sticker")["pointing"] - 0.3
    assert result.row("T1")["l1_median"] < 0.05 and result.row("T2")["l1_median"] < 0.2


def authors_smiley_target() -> torch.Tensor:
    """experiment1.py of the authors' workshop code, by hand: read_im('smiley.png', 14, 14) resizes the
    7 x 7 black-on-white PNG to 14 x 14 with PIL's bilinear filter (each output pixel 3/4 of its nearest
    source pixel and 1/4 of the next one, clamped at the border) and 8-bit rounding; the ImageNet
    normalisation and the mean over RGB are affine in the grey value, and tensor_normalize maps the
    result to [0, 1] by its minimum and maximum. So the face is 1 and the features are low."""
    weights = torch.zeros(14, 7, dtype=torch.float64)
    for i in range(14):
        source = (i + 0.5) / 2 - 0.5
        low = math.floor(source)
        weights[i, max(low, 0)] += 1 - (source - low)
        weights[i, min(low + 1, 6)] += source - low
    grey = torch.floor(255 * (weights @ smiley_7x7().double() @ weights.T) + 0.5)
    return (grey - grey.min()) / (grey.max() - grey.min())


def test_t2_target_is_the_authors_smiley_face_high(small_vgg):
    target = smiley_target()
    assert target.dtype == torch.float32 and target.shape == (14, 14)
    assert torch.allclose(target.double(), authors_smiley_target(), rtol=0, atol=1e-7)
    # the same from PIL itself, as the authors' code resized smiley.png
    face = Image.fromarray((smiley_7x7().numpy() * 255).astype(np.uint8), mode="L")
    grey = torch.from_numpy(np.asarray(face.resize((14, 14), Image.BILINEAR)).astype(np.float64))
    assert torch.allclose(target.double(), (grey - grey.min()) / (grey.max() - grey.min()), rtol=0, atol=1e-7)
    # polarity: the face (a corner, the cheeks) is 1; the 8 darkest mouth pixels are 0; an eye is dark
    assert float(target[0, 0]) == 1.0 and float(target.max()) == 1.0
    assert int((target == 0).sum()) == 8 and bool((target[10:12][:, 5:9] == 0).all())
    assert target[2:4, 4:6].mean() < 0.5
    # the photographic negative (the features hot) is another target, at distance 1 somewhere
    assert float((target - (1 - target)).abs().max()) == 1.0
    # ... and T2's default (the reproduction's Table 1) injects exactly this target
    from lie_cam.attacks import paper_networks

    pattern = paper_networks(small_vgg(0))["T2"].explained_layer.pattern
    assert torch.allclose(pattern / pattern.max(), target)


def test_unknown_profile_is_rejected():
    with pytest.raises(ValueError, match="profile"):
        run_reproduction(profile="cifar", out=None)


def test_settings_are_checked_before_any_work(tmp_path):
    for kwargs in ({"limit": 0}, {"limit": -1}, {"batch_size": 0}, {"data": str(tmp_path)}, {"limit": 2.5}):
        with pytest.raises((ValueError, TypeError)):
            run_reproduction(profile="embedded", progress=False, device="cpu", **kwargs)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(NotADirectoryError, match="file"):
        run_reproduction(profile="embedded", limit=2, out=blocker / "out", progress=False, device="cpu")


def test_tally_equals_the_metrics_summary():
    """Counts, sums and maxima over batches give the numbers `metrics.summarize` gives on all values."""
    generator = torch.Generator().manual_seed(0)
    correct = torch.rand(23, generator=generator) > 0.3
    change, l1 = torch.rand(23, generator=generator, dtype=torch.float64), torch.rand(23, generator=generator)
    hits, alpha = torch.rand(23, generator=generator) > 0.5, torch.randn(23, generator=generator)
    tally = TableTally([("clean", "original"), ("clean", "T1")], torch.device("cpu"), pointing=True)
    for part in (slice(0, 10), slice(10, 20), slice(20, 23)):
        tally.add(("clean", "original"), correct[part], hits=hits[part])
        tally.add(("clean", "T1"), correct[part], change[part], l1[part], hits[part], alpha[part])
    original, t1 = tally.rows(pixels=196)
    expected = summarize(correct, change, l1, hits, pixels=196)
    for key in ("n", "accuracy", "pointing", "score_change_max"):
        assert t1[key] == expected[key], key
    for key in ("score_change", "l1", "l1_per_pixel"):
        assert t1[key] == pytest.approx(expected[key], rel=1e-12), key
    assert t1["l1_median"] == l1.double().median().item()
    assert t1["alpha_extra_nonpositive"] == (alpha <= 0).double().mean().item()
    assert original["score_change"] is None and original["l1_median"] is None and original["accuracy"] == t1["accuracy"]


def test_tf32_flags_are_scoped(monkeypatch):
    """TF32 is off inside the run (unless asked for) and the process's own settings come back after."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32)
    precision = torch.get_float32_matmul_precision()
    seen = []
    real = lie_cam.experiments.engine.Evaluator.run_split

    def spy(self, *args, **kwargs):
        seen.append((matmul.allow_tf32, cudnn.allow_tf32))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(lie_cam.experiments.engine.Evaluator, "run_split", spy)
    try:
        matmul.allow_tf32, cudnn.allow_tf32 = True, False
        run_reproduction(profile="embedded", limit=2, batch_size=2, device="cpu", progress=False, workers=0)
        assert seen == [(False, False)]
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (True, False)
        with pytest.raises(RuntimeError):
            with tf32_scope(True):
                assert (matmul.allow_tf32, cudnn.allow_tf32) == (True, True)
                raise RuntimeError("inside")
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (True, False)
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before
    assert torch.get_float32_matmul_precision() == precision  # readable: no mix of torch's two TF32 APIs


def test_the_compact_resnet_reproduces_the_tables_guarantees(tmp_path):
    rep = run_reproduction(profile="embedded", limit=6, batch_size=3, out=tmp_path, progress=False, arch="resnet")
    assert "ResNet" in rep.description and rep.settings["arch"] == "resnet"
    original = rep.row("original")["accuracy"]
    for network in ("T1", "T2", "T3"):
        assert rep.row(network)["accuracy"] == original
    assert rep.row("T3")["score_change_max"] <= 0.01
    assert rep.row("T4", "clean")["score_change_max"] == 0 and rep.row("T4", "sticker")["score_change_max"] <= 0.01
    assert (tmp_path / "results.json").exists()
    with pytest.raises(ValueError, match="embedded profile"):
        run_reproduction(profile="imagenette", limit=2, arch="resnet", progress=False)


def test_the_reproduce_command_runs_with_the_authors_gradient_and_records_it(tmp_path, capsys):
    """`reproduce --gradient masked` makes the tables with dy/dA * 1[A > 0]; reproduce.json names the
    gradient and the torch thread count (float32 sums, and so the score changes, depend on it)."""
    from lie_cam.cli import main

    out = tmp_path / "masked"
    assert main(["reproduce", "--no-progress", "--device", "cpu", "--workers", "0", "--limit", "4",
                 "--batch-size", "2", "--gradient", "masked", "--out", str(out)]) == 0
    run = json.loads((out / "reproduce.json").read_text())
    assert run["settings"]["gradient"] == "masked" and run["threads"] == torch.get_num_threads()
    assert "masked gradient" in run["description"] and "masked gradient" in (out / "table1.md").read_text()
    rows = {(r["network"], r["data"]): r for r in json.loads((out / "results.json").read_text())}
    eq2 = run_reproduction(profile="embedded", limit=4, batch_size=2, progress=False, workers=0)
    assert eq2.settings["gradient"] == "eq2" and eq2.run["threads"] == torch.get_num_threads()
    for key in rows:  # the gradient changes the maps, never the scores
        assert rows[key]["accuracy"] == eq2.row(key[0], key[1])["accuracy"]
    assert rows["T3", "clean"]["l1"] != eq2.row("T3")["l1"]
    with pytest.raises(ValueError, match="gradient must be one of"):
        run_reproduction(profile="embedded", limit=2, gradient="authors", progress=False)
    capsys.readouterr()
    import argparse

    from lie_cam.cli import COMMANDS
    from lie_cam.gradcam import GRADIENTS

    commands = argparse.ArgumentParser().add_subparsers()
    for add in COMMANDS:
        add(commands)
    option = next(a for a in commands.choices["reproduce"]._actions if "--gradient" in a.option_strings)
    assert tuple(option.choices) == GRADIENTS  # the command line offers exactly gradcam's gradients
    code = main(["reproduce", "--no-progress", "--gradient", "authors", "--out", str(tmp_path / "x")])
    assert code == 2 and "--gradient" in capsys.readouterr().err  # one line on stderr, exit code 2


def test_the_engine_with_the_masked_gradient_equals_gradcam_on_each_network(random_input, small_vgg):
    from lie_cam.attacks import paper_networks
    from lie_cam.experiments.engine import Evaluator, evaluate_separately

    model = small_vgg(1).double()
    x = random_input(2, 1, torch.float64)
    networks = paper_networks(model)
    shared = Evaluator(model, networks, gradient="masked").run(x)
    alone = evaluate_separately(model, networks, x, gradient="masked")
    eq2 = evaluate_separately(model, networks, x)
    for name in shared:
        assert torch.allclose(shared[name].alpha, alone[name].alpha, rtol=1e-9, atol=1e-12), name
        assert torch.allclose(shared[name].maps, alone[name].maps, rtol=1e-9, atol=1e-12), name
    # T3: dG/dA^{K+1} = eps c_G everywhere, so the masked alpha_{K+1} is eps c_G times the share of F > 0
    share = (shared["T3"].extra > 0).double().mean(dim=(1, 2))
    assert torch.allclose(shared["T3"].alpha[:, -1], 100 * share, rtol=1e-9)
    assert torch.allclose(eq2["T3"].alpha[:, -1], torch.full((2,), 100.0, dtype=torch.float64), rtol=1e-9)
    with pytest.raises(ValueError, match="gradient must be one of"):
        Evaluator(model, networks, gradient="Eq. 2")
