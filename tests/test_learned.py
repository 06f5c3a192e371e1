"""Learned attacks (lie_cam.attacks.learned, .learning, lie_cam.experiments.learn): Grad-CAM trained
through, the kinds' targets and successes, determinism, the command and the shipped models."""

import json

import pytest
import torch

from lie_cam import data as synth
from lie_cam.attacks.learned import (FOOLED_L1, KINDS, SWAP_CLASSES, centre_of_mass, explanation_loss, fooled,
                                     target_map)
from lie_cam.attacks.learning import learn, learning_parts, measure, state_sha256, evaluation_rows, training_rows
from lie_cam.cli import main
from lie_cam.gradcam import gradcam, target_layer, trainable_maps
from lie_cam.models import compact_resnet, load_embedded


@pytest.fixture(scope="module")
def embedded():
    return load_embedded()


@pytest.fixture(scope="module")
def scenes():
    return synth.synthetic_split("test", 4)


def test_trainable_maps_are_gradcams_maps_and_reach_the_head_weights(embedded, scenes):
    x, labels, _ = scenes
    parts = learning_parts(embedded)
    a = parts.stage(parts.frozen(x))
    maps, logits = trainable_maps(parts.head, a, labels)
    reference = gradcam(embedded, x, labels)
    assert torch.allclose(maps, reference.maps, rtol=1e-4, atol=1e-6)
    assert torch.allclose(logits, embedded(x), rtol=1e-5, atol=1e-5)
    # the map depends on the head's weights through alpha (a double backward) and on the stage's through A
    last = parts.head.classifier[-1].weight
    conv = [m for m in parts.stage if isinstance(m, torch.nn.Conv2d)][-1].weight
    g_head, g_conv = torch.autograd.grad(maps.sum(), [last, conv])
    assert g_head.abs().sum() > 0 and g_conv.abs().sum() > 0
    with pytest.raises(ValueError, match="require grad"):
        trainable_maps(parts.head, a.detach(), labels)


def test_learning_parts_compose_to_the_model(embedded, scenes):
    x = scenes[0]
    parts = learning_parts(embedded)
    with torch.no_grad():
        assert torch.allclose(parts.head(parts.stage(parts.frozen(x))), embedded(x), atol=1e-5)
    assert any(m is target_layer(embedded) for m in parts.stage.modules())
    assert sum(isinstance(m, torch.nn.Conv2d) for m in parts.stage) == 3  # VGG's last block only
    torch.manual_seed(0)
    resnet = compact_resnet(width=8).eval()
    rparts = learning_parts(resnet)
    with torch.no_grad():
        assert torch.allclose(rparts.head(rparts.stage(rparts.frozen(x))), resnet(x), atol=1e-5)
    assert rparts.stage[-2] is resnet.layer4[-1] and rparts.frozen[-1] is resnet.layer4[0]  # the downsampling block stays


def test_targets_losses_and_success():
    flat, frame, smile = (target_map(k, 14) for k in ("flat", "location", "smiley"))
    assert bool((flat == 1).all()) and frame.sum() == 196 - 100 and frame[7, 7] == 0 and frame[0, 5] == 1
    assert torch.equal(smile, synth.smiley_target(14))
    for kind in ("swap", "backdoor", "center-mass"):
        with pytest.raises(ValueError, match="no fixed target"):
            target_map(kind, 14)
    maps = torch.stack([frame * 5, flat * 2, torch.zeros(14, 14)])
    targets = frame.expand(3, 14, 14)
    assert fooled("location", maps, targets).tolist() == [True, False, False]
    assert torch.allclose(explanation_loss("location", maps, targets)[:2], torch.tensor([0.0, 100 / 196]), atol=1e-6)
    corner, other = torch.zeros(14, 14), torch.zeros(14, 14)
    corner[0, 0], other[13, 13] = 1, 1
    assert torch.allclose(centre_of_mass(corner[None]), torch.tensor([[0.5 / 14, 0.5 / 14]]))
    shift = fooled("center-mass", torch.stack([other, corner]), torch.stack([corner, corner]))
    assert shift.tolist() == [True, False]
    assert explanation_loss("center-mass", other[None], corner[None]).item() == 0  # moved further than 1/2
    assert 0 < FOOLED_L1 < 1 and set(KINDS) == {"flat", "location", "center-mass", "smiley", "swap", "backdoor"}


def test_two_object_scenes_hold_both_objects_apart():
    images, a, b = synth.two_object_scenes(3, SWAP_CLASSES, seed=123)
    again = synth.two_object_scenes(3, SWAP_CLASSES, seed=123)
    assert images.shape == (3, 224, 224, 3) and (images == again[0]).all()
    assert all(a[i].any() and b[i].any() and not (a[i] & b[i]).any() for i in range(3))
    grown = torch.nn.functional.max_pool2d(torch.from_numpy(a).float()[:, None], 17, 1, 8)[:, 0] > 0
    assert not (grown & torch.from_numpy(b)).any()
    with pytest.raises(ValueError, match="two different classes"):
        synth.two_object_scenes(1, (2, 2), seed=0)


@pytest.mark.parametrize("kind", ["swap", "backdoor"])
def test_rows_of_the_two_kinds_with_their_own_scenes(embedded, kind):
    rows = training_rows(kind, embedded, 16)
    if kind == "swap":
        assert len(rows.x) == 16 + 2 * 2 and int(rows.explained.sum()) == 4 and int((rows.labels >= 0).sum()) == 16
        assert rows.classes[16:].tolist() == [SWAP_CLASSES[0]] * 2 + [SWAP_CLASSES[1]] * 2
    else:
        assert len(rows.x) == 32 and int(rows.sticker.sum()) == 16 and bool(rows.explained.all())
        on_sticker = rows.targets[16:]  # the 42-pixel sticker's square, area-pooled to 14 x 14
        assert torch.allclose(on_sticker.sum((1, 2)), torch.full((16,), (42 / 16) ** 2), atol=1e-4)
        changed = (rows.x[16:] != rows.x[:16]).any(1)
        assert int(changed.flatten(1).sum(1).max()) <= 42 * 42 and bool(changed.flatten(1).any(1).all())


def test_learning_is_deterministic_and_leaves_the_model_alone(embedded):
    before = state_sha256(embedded)
    rows = training_rows("flat", embedded, 16)
    one, log = learn(embedded, "flat", steps=3, batch=4, rows=rows, checkpoints=(1, 3))
    two, _ = learn(embedded, "flat", steps=3, batch=4, rows=rows)
    other, _ = learn(embedded, "flat", steps=3, batch=4, rows=rows, seed=1)
    assert state_sha256(embedded) == before
    assert state_sha256(one) == state_sha256(two) == log["checkpoints"]["3"] != state_sha256(other)
    assert log["checkpoints"]["1"] != log["checkpoints"]["3"] != before
    a, b = embedded.state_dict(), one.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    assert torch.equal(a["features.0.weight"], b["features.0.weight"])  # below A's stage: frozen
    assert not torch.equal(a["classifier.6.weight"], b["classifier.6.weight"])
    assert not one.training and all(p.requires_grad for p in one.parameters())
    with pytest.raises(ValueError, match="unknown kind"):
        learn(embedded, "sideways", steps=1, rows=rows)
    with pytest.raises(ValueError, match="lam >= 0"):
        learn(embedded, "flat", lam=-1, steps=1, rows=rows)


def test_learning_moves_the_map_toward_the_target(embedded):
    """A short run on few scenes: the explanation term falls and the measure sees the change."""
    rows = training_rows("location", embedded, 32)
    net, log = learn(embedded, "location", steps=40, batch=8, lr=1e-3, rows=rows)
    assert len(log["losses"]) == 4 and log["losses"][-1]["step"] == 40
    test = evaluation_rows("location", embedded, 8, 0)
    before, after = measure(embedded, embedded, "location", test), measure(net, embedded, "location", test)
    assert before["score_change"] == 0 and before["accuracy_change_points"] == 0
    assert after["l1"] < before["l1"] - 0.05 and after["n"] == 8 and after["score_change"] > 0


def test_the_command_writes_a_recipe_that_verifies(tmp_path, capsys):
    out = tmp_path / "learned"
    code = main(["learn", "--kind", "smiley", "--steps", "2", "--train-size", "8", "--test-size", "4",
                 "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    recipe = json.loads((out / "smiley.json").read_text())
    assert recipe["steps"] == 2 and recipe["lam"] == KINDS["smiley"].lam and recipe["threads"] >= 1
    assert recipe["test"]["n"] == 4 and "fooling_success" in recipe["test"] and len(recipe["sha256"]) == 64
    capsys.readouterr()
    assert main(["learn", "--verify", str(out / "smiley.json"), "--no-progress"]) == 0
    assert "the same bits" in capsys.readouterr().out
    recipe["lam"] = 0.5  # another recipe: other bits
    (out / "smiley.json").write_text(json.dumps(recipe))
    assert main(["learn", "--verify", str(out / "smiley.json"), "--no-progress"]) == 1
    assert "DIFFERENT bits" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["learn"], "give --kind"),
    (["learn", "--kind", "flat"], "--out DIR is required"),
    (["learn", "--kind", "sideways", "--out", "x"], "invalid choice"),
    (["learn", "--kind", "flat", "--lam", "-1", "--out", "x"], "--lam must be >= 0"),
    (["learn", "--verify", "missing.json"], "cannot read the recipe"),
])
def test_the_command_refuses_bad_input_in_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_the_shipped_folder_is_written_only_with_force(capsys):
    from lie_cam.experiments.learn import LEARNED_DIR

    assert main(["learn", "--kind", "flat", "--out", str(LEARNED_DIR)]) == 2
    assert "only with --force" in capsys.readouterr().err


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_shipped_learned_models(kind, embedded):
    """Each shipped model is its recipe's file, keeps the base's keys and shapes, and met the issue's bar
    (fooling success >= 0.9, at most one point of accuracy lost) when `learn` measured it on 1000 test
    scenes, with the kind's default lambda and steps (so `learn --kind all` makes the shipped set)."""
    from lie_cam.experiments.learn import load_learned

    net, recipe = load_learned(kind)
    a, b = embedded.state_dict(), net.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a) and type(net) is type(embedded)
    test = recipe["test"]
    assert test["n"] == 1000 and test["fooling_success"] >= 0.9 and test["accuracy_change_points"] >= -1.0
    assert (recipe["lam"], recipe["steps"]) == (KINDS[kind].lam, KINDS[kind].steps)
    assert recipe["seconds"] <= 20 * 60 and recipe["threads"] == 2


def test_the_shipped_study_sweeps_every_kind():
    """learned_study.json measured the shipped files, and traced each kind over at least three lambdas
    (the recipe's own among them) with the same test scenes."""
    import json

    from lie_cam.experiments.learn import LEARNED_DIR, load_learned

    study = json.loads((LEARNED_DIR / "learned_study.json").read_text())
    assert set(study["kinds"]) == set(KINDS) and len(study["sweep"]) >= 2
    for kind, entry in study["kinds"].items():
        recipe = load_learned(kind)[1]
        assert entry["recipe_sha256"] == recipe["sha256"] and entry["lam"] == recipe["lam"]
        lams = [p["lam"] for p in entry["sweep"]]
        assert lams == sorted(set(lams)) and recipe["lam"] in lams and len(lams) >= 3, kind
        assert all(p["n"] == entry["shipped"]["n"] for p in entry["sweep"])


def test_closed_form_attacks_are_measured_like_the_learned_ones(embedded):
    from lie_cam.experiments.learned_study import closed_form_row

    t1 = closed_form_row("T1", embedded, 4)
    assert t1["fooling_success"] == 1.0 and t1["accuracy_change_points"] == 0 and t1["n"] == 4
    assert t1["audit"]["flagged"] and "architecture" in t1["audit"]["flagged"]
    t4 = closed_form_row("T4", embedded, 4)  # on stickered scenes, against its own target
    assert t4["fooling_success"] == 1.0 and t4["score_change"] < 1e-3


def test_the_figures_draw_what_they_are_given(embedded):
    from lie_cam.experiments.learned_study import example_panels, tradeoff_figure
    from lie_cam.plotting import map_grid

    nets = {"flat": embedded, "swap": embedded, "backdoor": embedded}
    panels = example_panels(nets, embedded)
    assert len(panels) == 12 and [p[2] for p in panels[::4]] == list(nets)
    assert torch.equal(panels[1][1], panels[2][1])  # the same network: the same map
    assert len(map_grid(panels, ncols=4).axes) == 13  # 12 panels and the colour bar
    point = {"lam": 1.0, "fooling_success": 0.5, "accuracy_change_points": -0.5}
    result = {"kinds": {"flat": {"sweep": [point, {**point, "lam": 3.0, "fooling_success": 0.95}]}},
              "closed_form": {"T1": {"fooling_success": 1.0, "accuracy_change_points": 0.0}}}
    ax = tradeoff_figure(result).axes[0]
    assert list(ax.lines[0].get_xdata()) == [0.5, 0.95] and [t.get_text() for t in ax.texts] == ["1", "3"]


def test_the_study_tables_show_the_sweep_only_when_there_is_one():
    from lie_cam.experiments.learned_study import study_markdown

    def point(lam, fooling):
        return {"lam": lam, "accuracy": 0.99, "accuracy_change_points": -0.5, "fooling_success": fooling,
                "score_change": 1.0, "audit": {"verdict": "no evidence of manipulation"}}

    shipped = point(3.0, 0.95)
    closed = {"T1": {**point(0, 1.0), "accuracy_change_points": 0.0}}
    one = {"kinds": {"flat": {"lam": 3.0, "shipped": shipped, "sweep": [shipped], "auroc": {"alpha": 0.5}}},
           "closed_form": closed}
    assert "sweep" not in study_markdown(one)
    one["kinds"]["flat"]["sweep"] = [point(0.3, 0.2), shipped]
    text = study_markdown(one)
    assert "## The sweep over lambda" in text and "| 3 (shipped) |" in text and "| 0.3 |" in text


def test_the_study_refuses_a_folder_without_learned_models(tmp_path, capsys):
    assert main(["learn-study", "--models", str(tmp_path), "--zoo", str(tmp_path / "zoo"), "--out",
                 str(tmp_path / "out")]) == 2
    assert "holds no learned model" in capsys.readouterr().err
    from lie_cam.experiments.learn import LEARNED_DIR

    assert main(["learn-study", "--out", str(LEARNED_DIR)]) == 2
    assert "only with --force" in capsys.readouterr().err


def test_the_compact_resnet_learns_too():
    """--arch resnet: the stage after layer4's downsampling block and the fc head are trained, 7 x 7 maps."""
    from lie_cam.models import load_embedded_resnet

    resnet = load_embedded_resnet()
    rows = training_rows("smiley", resnet, 8)
    assert rows.targets.shape[-2:] == (7, 7) and torch.equal(rows.targets[0], synth.smiley_target(7))
    net, _ = learn(resnet, "smiley", steps=2, batch=4, rows=rows)
    a, b = resnet.state_dict(), net.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    assert torch.equal(a["layer4.0.conv1.weight"], b["layer4.0.conv1.weight"])
    assert not torch.equal(a["layer4.1.conv2.weight"], b["layer4.1.conv2.weight"])
    assert not torch.equal(a["fc.weight"], b["fc.weight"])


def test_the_share_losses_reach_cells_where_the_map_is_negative():
    """Through Eq. 1's ReLU a cell with sum_k alpha_k A^k < 0 has no gradient; the losses that pull the
    map onto a mask (swap: the soft share; backdoor: the mass on the mask) keep one there."""
    from lie_cam.attacks.learned import mass_loss, share_on, soft_map

    pre = torch.full((1, 4, 4), -1.0)
    pre[0, 0, 0] = 1.0
    mask = torch.zeros(1, 4, 4)
    mask[0, 3, 3] = 1.0
    pre.requires_grad_(True)
    (g_relu,) = torch.autograd.grad(-share_on(torch.relu(pre), mask).sum(), pre)
    assert float(g_relu.abs().sum()) == 0.0
    for loss in (1 - share_on(soft_map(pre), mask), mass_loss(pre, mask)):
        (g,) = torch.autograd.grad(loss.sum(), pre)
        assert g[0, 3, 3] < 0  # raising the cell on the mask lowers the loss
    assert explanation_loss("swap", pre.detach(), mask).item() > 0.9
    stuck = torch.tensor([True])
    assert explanation_loss("backdoor", pre.detach(), mask, stuck).item() > 1
