import pickle

import pytest
import torch

from lie_cam.compat import import_torchvision
from lie_cam.models import EMBEDDED_WEIGHTS, compact_vgg16, embedded_metadata, fold_batchnorm, load_embedded, load_vgg16, sha256_file


def test_compact_vgg16_has_vgg16_layer_structure():
    import_torchvision()
    from torchvision.models import vgg16

    ours, reference = compact_vgg16(), vgg16(weights=None)
    assert [type(m) for m in ours.features] == [type(m) for m in reference.features]
    assert sum(isinstance(m, torch.nn.Conv2d) for m in ours.features) == 13
    assert ours.features[28].out_channels == 64  # 512 / 8


def test_fold_batchnorm_is_exact_and_removes_batchnorm(random_input):
    torch.manual_seed(0)
    model = compact_vgg16(width=1 / 16, hidden=32, batch_norm=True)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    model.eval()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert len(folded.features) == 31
    x = random_input(2)
    assert torch.allclose(model(x), folded(x), rtol=1e-4, atol=1e-5)


@pytest.fixture
def vgg16_state(tmp_path):
    import_torchvision()
    from torchvision.models import vgg16

    torch.manual_seed(0)
    state = vgg16(weights=None).state_dict()
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    return path, state


def test_load_vgg16_from_a_plain_checkpoint(vgg16_state):
    path, state = vgg16_state
    model = load_vgg16(path)
    assert not model.training
    assert torch.equal(model.features[0].weight, state["features.0.weight"])


class Payload:
    def __reduce__(self):
        return (print, ("this checkpoint ran code",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_that_needs_pickle_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"features.0.weight": Payload()}, handle)
    with pytest.raises(ValueError, match="weights_only"):
        load_vgg16(path)
    assert "ran code" not in capsys.readouterr().out


def test_missing_and_wrong_checkpoints(small_vgg, tmp_path):
    with pytest.raises(FileNotFoundError):
        load_vgg16(tmp_path / "nope.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save(small_vgg(0).state_dict(), wrong)
    with pytest.raises(ValueError, match="not a torchvision VGG-16"):
        load_vgg16(wrong)


def test_shipped_model_checksum_matches_and_loads_without_pickle():
    meta = embedded_metadata()
    assert sha256_file(EMBEDDED_WEIGHTS) == meta["sha256"]
    model = load_embedded()
    assert not model.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_tampered_model_file_is_detected(tmp_path, monkeypatch):
    import lie_cam.models as models

    copy = tmp_path / "compact_vgg16.safetensors"
    data = bytearray(EMBEDDED_WEIGHTS.read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    monkeypatch.setattr(models, "EMBEDDED_WEIGHTS", copy)
    with pytest.raises(ValueError, match="sha256"):
        models.load_embedded()


def test_shipped_model_reaches_its_accuracy_on_a_test_slice():
    from lie_cam.train import evaluate_embedded

    result = evaluate_embedded(load_embedded(), n=200, batch_size=50)
    assert result["accuracy"] >= 0.95
    assert result["pointing"] >= 0.90  # strict pointing game: the peak of the map on the object
    recorded = embedded_metadata()["test"]  # the 1000-image numbers the recipe records
    assert recorded["n"] == 1000 and recorded["accuracy"] >= 0.95 and recorded["pointing"] >= 0.90


def test_a_training_step_runs_and_changes_the_weights():
    from lie_cam.data import synthetic_split
    from lie_cam.train import train_step

    torch.manual_seed(0)
    model = compact_vgg16(width=1 / 32, hidden=16, batch_norm=True)
    before = model.features[0].weight.clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y, _ = synthetic_split("train", 4)
    loss = train_step(model, optimizer, x, y)
    assert 0 < loss < 10
    assert not torch.equal(before, model.features[0].weight)


def test_retrained_model_elsewhere_is_checked_against_its_own_recipe(tmp_path):
    import json
    import shutil

    copy = tmp_path / "compact_vgg16.safetensors"
    shutil.copy(EMBEDDED_WEIGHTS, copy)
    recipe = embedded_metadata()
    (tmp_path / "compact_vgg16.json").write_text(json.dumps(recipe))
    assert isinstance(load_embedded(copy), torch.nn.Module)
    recipe["sha256"] = "0" * 64
    (tmp_path / "compact_vgg16.json").write_text(json.dumps(recipe))
    with pytest.raises(ValueError, match="sha256"):
        load_embedded(copy)


def test_train_resnet_one_command_writes_a_loadable_model_and_its_recipe(tmp_path):
    """`python -m lie_cam.train --arch resnet` end to end, cut to 2 steps: the recipe beside the
    weights names the one command that made them and its sha256, and the loader accepts them."""
    import json

    from lie_cam.models import load_embedded_resnet, sha256_file
    from lie_cam.train import main

    out = tmp_path / "resnet.safetensors"
    main(["--arch", "resnet", "--train-size", "128", "--epochs", "1", "--max-steps", "2", "--test-size", "20",
          "--workers", "1", "--out", str(out)])
    recipe = json.loads(out.with_suffix(".json").read_text())
    assert recipe["sha256"] == sha256_file(out) and recipe["training"]["init"] is None
    assert recipe["training"]["steps"] == 2 and recipe["command"].startswith("python -m lie_cam.train --arch resnet")
    model = load_embedded_resnet(out)
    assert model.fc.out_features == 10 and not model.training


def test_train_defaults_depend_on_the_architecture(monkeypatch, tmp_path):
    from lie_cam import train as T

    seen = {}

    def render(n, seed, workers=2, chunk=250):  # stop right after the sizes are resolved
        seen["train_size"] = n
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "render_parallel", render)
    monkeypatch.chdir(tmp_path)  # the default --out is in the current folder
    cases = [(["--arch", "resnet"], 6000), (["--arch", "vgg"], 12_000), (["--arch", "resnet", "--train-size", "64"], 64)]
    for argv, expected in cases:
        with pytest.raises(KeyboardInterrupt):
            T.main(argv)
        assert seen["train_size"] == expected, argv
    assert T.ARCH_DEFAULTS["resnet"] == {"train_size": 6000, "epochs": 13}
    with pytest.raises(ValueError, match="arch must be"):
        T.train(tmp_path / "model.safetensors", arch="densenet")


# --- weights and recipes checked on load (issue 23) -------------------------------------------

def _embedded_state():
    from lie_cam.models import read_safetensors

    return read_safetensors(EMBEDDED_WEIGHTS)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_without_a_recipe_are_refused_naming_the_tensor(bad, tmp_path):
    from safetensors.torch import save_file

    from lie_cam.models import load_model_file

    state = _embedded_state()
    state["features.26.weight"][3, 2, 1, 0] = bad
    path = tmp_path / "corrupted.safetensors"  # no recipe beside it: nothing else would catch it
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"corrupted.safetensors: tensor 'features.26.weight' holds 1 NaN/inf"):
        load_embedded(path)
    with pytest.raises(ValueError, match=r"features.26.weight.*NaN/inf"):
        load_model_file(path)


def test_integer_weights_are_refused_not_cast(tmp_path):
    from safetensors.torch import save_file

    from lie_cam.models import load_model_file

    state = _embedded_state()
    state["classifier.6.weight"] = (state["classifier.6.weight"] * 100).round().to(torch.int32)
    path = tmp_path / "integers.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"'classifier.6.weight' is int32, expected floating point weights"):
        load_embedded(path)
    with pytest.raises(ValueError, match=r"classifier.6.weight' is int32"):
        load_model_file(path)


def test_reproduce_refuses_a_corrupted_checkpoint(tmp_path, capsys):
    from safetensors.torch import save_file

    from lie_cam.cli import main

    state = _embedded_state()
    state["classifier.0.bias"][0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file(state, str(path))
    argv = ["reproduce", "--no-progress", "--device", "cpu", "--workers", "0", "--limit", "2", "--checkpoint",
            str(path), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "classifier.0.bias" in err[0] and "weights file is corrupted" in err[0]
    assert not (tmp_path / "out").exists()


def _copy_with_recipe(tmp_path, recipe_text: str):
    import shutil

    path = tmp_path / "model.safetensors"
    shutil.copy(EMBEDDED_WEIGHTS, path)
    (tmp_path / "model.json").write_text(recipe_text)
    return path


def test_a_broken_recipe_is_named(tmp_path):
    path = _copy_with_recipe(tmp_path, '{"architecture": {"width": 0.125,')
    with pytest.raises(ValueError, match=r"recipe .*model.json beside model.safetensors is not valid JSON"):
        load_embedded(path)


def test_unknown_recipe_keys_are_named(tmp_path):
    import json

    recipe = embedded_metadata()
    recipe["architecture"]["depth"] = 19
    path = _copy_with_recipe(tmp_path, json.dumps(recipe))
    with pytest.raises(ValueError, match=r"model.json: 'architecture' has unknown keys \['depth'\]"):
        load_embedded(path)
    recipe = embedded_metadata()
    recipe["weights_url"] = "http://example.org"
    path = _copy_with_recipe(tmp_path, json.dumps(recipe))
    with pytest.raises(ValueError, match=r"model.json has unknown keys \['weights_url'\]"):
        load_embedded(path)


def test_a_recipe_of_the_other_architecture_says_which_to_use(tmp_path, capsys):
    import json
    import shutil

    from lie_cam.cli import main
    from lie_cam.models import RESNET_WEIGHTS, load_embedded_resnet

    resnet = tmp_path / "resnet.safetensors"
    shutil.copy(RESNET_WEIGHTS, resnet)
    shutil.copy(RESNET_WEIGHTS.with_suffix(".json"), tmp_path / "resnet.json")
    with pytest.raises(ValueError, match="describes a compact ResNet, not a VGG-16: use --arch resnet"):
        load_embedded(resnet)
    vgg = _copy_with_recipe(tmp_path, json.dumps(embedded_metadata()))
    with pytest.raises(ValueError, match="describes a compact VGG-16, not a ResNet: use --arch vgg"):
        load_embedded_resnet(vgg)
    argv = ["reproduce", "--no-progress", "--device", "cpu", "--workers", "0", "--limit", "2", "--checkpoint",
            str(resnet), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "use --arch resnet" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_gradcam_blames_a_non_finite_weight_not_the_input(bad, small_vgg, random_input):
    from lie_cam import gradcam

    model = small_vgg(0)
    with torch.no_grad():
        model.features[0].weight[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match=r"weights are not: features.0.weight hold NaN or infinite values"):
        gradcam(model, random_input(2))
