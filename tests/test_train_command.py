"""`python -m lie_cam.train` and `python -m lie_cam.experiments.zoo` lose no work (issue 23): the shipped
model is replaced only with --force, every argument is refused before any work (one line on stderr,
exit code 2), and the trained model is saved before its final evaluation.

The shipped folder is a copy in tmp_path here (`shipped` fixture); the real shipped files' bytes are
checked unchanged around every test of this module.
"""

import copy
import shutil

import pytest
import torch

from lie_cam import train as T
from lie_cam.cli import main as cli_main
from lie_cam.experiments import zoo as Z
from lie_cam.models import EMBEDDED_RECIPE, EMBEDDED_WEIGHTS, load_embedded, sha256_file

TINY = ["--train-size", "8", "--batch-size", "8", "--epochs", "1", "--val-size", "4", "--test-size", "4",
        "--workers", "1", "--device", "cpu"]


@pytest.fixture(autouse=True)
def real_shipped_files_untouched():
    before = {p: sha256_file(p) for p in (EMBEDDED_WEIGHTS, EMBEDDED_RECIPE)}
    yield
    assert {p: sha256_file(p) for p in before} == before, "a test changed the real shipped model"


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A copy of the shipped data folder, which `train` takes for lie_cam's; the cwd is an empty folder."""
    data = tmp_path / "data"
    data.mkdir()
    for path in (EMBEDDED_WEIGHTS, EMBEDDED_RECIPE):
        shutil.copy(path, data / path.name)
    monkeypatch.setattr(T, "DATA_DIR", data)
    monkeypatch.setattr(T, "EMBEDDED_WEIGHTS", data / EMBEDDED_WEIGHTS.name)
    monkeypatch.setattr(T, "EMBEDDED_RECIPE", data / EMBEDDED_RECIPE.name)
    monkeypatch.setattr(T, "RESNET_WEIGHTS", data / "compact_resnet.safetensors")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return data


def no_work(monkeypatch):
    def started(*args, **kwargs):
        raise AssertionError("the work started before the arguments were checked")

    monkeypatch.setattr(T, "render_parallel", started)
    monkeypatch.setattr(T, "_fit", started)


def refused(run, argv, capsys) -> str:
    code = run(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (code, captured.err)
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def contents(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_default_run_leaves_the_shipped_model_alone(shipped, capsys):
    before = contents(shipped)
    code = T.main(TINY)
    assert contents(shipped) == before  # before the patch: replaced, with a matching sha256 in the recipe
    assert code == 0
    made = T.DATA_DIR.parent / "work" / "compact_vgg16.safetensors"  # the current folder
    assert load_embedded(made).classifier[-1].out_features == 10  # checked against the sha256 beside it
    assert "compact_vgg16.safetensors" in capsys.readouterr().out


def test_the_shipped_folder_and_existing_files_need_force(shipped, monkeypatch, capsys):
    target = shipped / EMBEDDED_WEIGHTS.name
    before = contents(shipped)
    with monkeypatch.context() as m:
        no_work(m)
        line = refused(T.main, [*TINY, "--out", str(target)], capsys)
        assert "--out" in line and "shipped data folder" in line and "--force" in line
        assert contents(shipped) == before
        elsewhere = T.DATA_DIR.parent / "elsewhere.safetensors"
        elsewhere.write_bytes(b"an earlier result")
        line = refused(T.main, [*TINY, "--out", str(elsewhere)], capsys)
        assert "already exist" in line and "--force" in line and elsewhere.read_bytes() == b"an earlier result"
        line = refused(T.main, ["--evaluate-only", "--test-size", "0"], capsys)
        assert "--test-size" in line
    assert T.main([*TINY, "--out", str(target), "--force"]) == 0
    assert contents(shipped) != before
    assert load_embedded(target).classifier[-1].out_features == 10


def _folder(tmp_path):
    (tmp_path / "a_folder").mkdir(exist_ok=True)
    return str(tmp_path / "a_folder")


def _under_a_file(tmp_path):
    (tmp_path / "a_file").write_text("x")
    return str(tmp_path / "a_file" / "model.safetensors")


BAD = [
    (["--test-size", "0"], "--test-size"),
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--max-steps", "-5"], "--max-steps"),
    (["--max-steps", "0"], "--max-steps"),
    (["--threads", "-1"], "--threads"),
    (["--threads", "0"], "--threads"),
    (["--workers", "0"], "--workers"),
    (["--seed", "-1"], "--seed"),
    (["--lr", "nan"], "lr"),
    (["--lr", "0"], "lr"),
    (["--device", "gpu0"], "--device"),
    (["--out", ""], "--out is empty"),
    (["--out", "model.json"], ".safetensors"),
    (["--out", "/proc/no/model.safetensors"], "cannot write"),
    (_folder, "is a folder"),
    (_under_a_file, "not a folder"),
]


@pytest.mark.parametrize("bad,expected", BAD, ids=[getattr(b[0], "__name__", str(b[0])) for b in BAD])
def test_bad_arguments_are_refused_before_any_work(bad, expected, shipped, tmp_path, monkeypatch, capsys):
    no_work(monkeypatch)
    argv = ["--out", bad(tmp_path)] if callable(bad) else bad
    line = refused(T.main, [*TINY, *argv], capsys)
    assert expected in line
    line = refused(cli_main, ["train", *TINY, *argv], capsys)  # python -m lie_cam train: the same
    assert expected in line


def test_a_training_set_smaller_than_one_batch_is_refused(shipped, monkeypatch, capsys):
    no_work(monkeypatch)
    line = refused(T.main, ["--train-size", "10", "--test-size", "4", "--workers", "1"], capsys)
    assert "train_size (10)" in line and "batch_size 64" in line
    with pytest.raises(ValueError, match="warmup"):
        T.train("m.safetensors", train_size=8, batch_size=8, warmup=0)
    with pytest.raises(TypeError, match="epochs"):
        T.train("m.safetensors", epochs=1.5)


def test_cuda_without_cuda_is_refused(shipped, monkeypatch, capsys):
    no_work(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = refused(T.main, [*TINY, "--device", "cuda"], capsys)
    assert "CUDA is not available" in line and "--device cpu" in line


def test_init_of_the_other_architecture_is_refused(shipped, monkeypatch, capsys):
    no_work(monkeypatch)
    line = refused(T.main, [*TINY, "--arch", "resnet", "--init", str(shipped / EMBEDDED_WEIGHTS.name)], capsys)
    assert "--init" in line and "use --arch vgg" in line
    line = refused(T.main, [*TINY, "--init", str(shipped / "missing.safetensors")], capsys)
    assert "--init" in line and "missing.safetensors" in line


def test_the_model_is_saved_before_the_final_evaluation(shipped, monkeypatch, capsys):
    def evaluation_fails(*args, **kwargs):
        raise RuntimeError("the test split could not be evaluated")

    monkeypatch.setattr(T, "evaluate_embedded", evaluation_fails)
    line = refused(T.main, [*TINY, "--out", "kept.safetensors"], capsys)
    assert "could not be evaluated" in line
    model = load_embedded("kept.safetensors")  # the recipe beside it (no test metrics yet) and its sha256
    assert model.classifier[-1].out_features == 10


# --- python -m lie_cam.experiments.zoo -----------------------------------------------------

@pytest.fixture(scope="module")
def narrow():
    from lie_cam.models import compact_vgg16

    torch.manual_seed(0)
    return compact_vgg16(width=1 / 32, hidden=8).eval()


@pytest.fixture
def quick_zoo(monkeypatch, narrow):
    """build_zoo with each recipe's training replaced by a copy of one random narrow VGG (the writing is
    what is tested)."""
    trained = []

    def fake(recipe):
        trained.append(recipe.name)
        return copy.deepcopy(narrow)

    monkeypatch.setattr(Z, "train_recipe", fake)
    return trained


@pytest.mark.parametrize("argv,expected", [
    (["--threads", "-1"], "--threads"), (["--threads", "0"], "--threads"), (["--out", ""], "--out is empty"),
    (["--out", "/proc/zoo"], "cannot write"),
])
def test_zoo_command_refuses_bad_arguments(argv, expected, quick_zoo, tmp_path, capsys):
    line = refused(Z.main, ["--out", str(tmp_path / "zoo"), *argv], capsys)
    assert expected in line and quick_zoo == []


def test_zoo_command_refuses_an_out_that_is_a_file(quick_zoo, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert "not a folder" in refused(Z.main, ["--out", str(blocker)], capsys)
    assert blocker.read_text() == "x" and quick_zoo == []


def test_an_interrupted_zoo_build_leaves_the_earlier_zoo(quick_zoo, narrow, tmp_path, monkeypatch):
    out = tmp_path / "zoo"
    Z.build_zoo(out, test_size=2)
    before = contents(out)
    assert len(quick_zoo) == len(Z.RECIPES) and set(before) == set(Z.zoo_files())
    Z.build_zoo(out, test_size=2)
    assert len(quick_zoo) == len(Z.RECIPES) and contents(out) == before  # every model reused, none retrained
    calls = []

    def interrupted(recipe):
        calls.append(recipe.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        model = copy.deepcopy(narrow)
        torch.nn.init.normal_(model.classifier[-1].weight)  # not the earlier run's weights
        return model

    monkeypatch.setattr(Z, "train_recipe", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Z.build_zoo(out, test_size=2, force=True)
    assert contents(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["zoo"]
