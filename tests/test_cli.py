"""The reproduce command refuses bad input before any work: one line on stderr, exit code 2."""

import pickle

import pytest
import torch

import lie_cam.experiments.engine
from lie_cam.cli import main


class Payload:
    """A pickled object: loading it needs pickle to run code, so weights_only=True refuses it."""


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the evaluation is ever set up (the work starts with the Evaluator)."""

    def started(*args, **kwargs):
        raise AssertionError("the work started before the input was checked")

    monkeypatch.setattr(lie_cam.experiments.engine.Evaluator, "__init__", started)


def refused(argv, capsys) -> str:
    """Run the CLI in this process; assert exit code 2 and exactly one line on stderr; return it."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (code, captured.err)
    assert len(lines) == 1, captured.err
    return lines[0]


def reproduce(tmp_path, *extra):
    return ["reproduce", "--no-progress", "--device", "cpu", "--workers", "0", "--out", str(tmp_path / "out"), *extra]


@pytest.mark.parametrize("limit", ["0", "-5", "ten"])
def test_limit_must_be_positive(limit, tmp_path, capsys, no_work):
    line = refused(reproduce(tmp_path, "--limit", limit), capsys)
    assert "--limit" in line and "positive integer" in line
    assert not (tmp_path / "out").exists()


def test_batch_size_must_be_positive(tmp_path, capsys, no_work):
    assert "--batch-size" in refused(reproduce(tmp_path, "--batch-size", "0"), capsys)


def test_out_under_a_regular_file(tmp_path, capsys, no_work):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    line = refused(["reproduce", "--no-progress", "--device", "cpu", "--limit", "2", "--out", str(blocker / "sub")],
                   capsys)
    assert "--out" in line and "a_file" in line and "not a folder" in line
    assert blocker.read_text() == "not a folder"


def test_out_is_a_regular_file(tmp_path, capsys, no_work):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    line = refused(["reproduce", "--no-progress", "--device", "cpu", "--limit", "2", "--out", str(blocker)], capsys)
    assert "--out" in line and "not a folder" in line


def test_data_is_refused_for_the_embedded_profile(tmp_path, capsys, no_work):
    line = refused(reproduce(tmp_path, "--limit", "2", "--data", str(tmp_path)), capsys)
    assert "embedded" in line and "data" in line


def test_cuda_without_cuda(tmp_path, capsys, monkeypatch, no_work):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["reproduce", "--no-progress", "--limit", "2", "--device", "cuda", "--out", str(tmp_path / "out")]
    line = refused(argv, capsys)
    assert "CUDA is not available" in line and "--device cpu" in line


def test_not_a_device(tmp_path, capsys, no_work):
    argv = ["reproduce", "--no-progress", "--limit", "2", "--device", "gpu0", "--out", str(tmp_path / "out")]
    assert "is not a device" in refused(argv, capsys)


def _checkpoint_refused(tmp_path, capsys, path) -> str:
    line = refused(reproduce(tmp_path, "--limit", "2", "--checkpoint", str(path)), capsys)
    assert "checkpoint" in line and str(path) in line and "expected" in line
    assert not (tmp_path / "out").exists()
    return line


def test_checkpoint_that_is_a_pickle(tmp_path, capsys, no_work):
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"features.0.weight": [1.0, 2.0]}))
    _checkpoint_refused(tmp_path, capsys, path)


def test_checkpoint_that_is_truncated(tmp_path, capsys, no_work):
    from lie_cam.models import EMBEDDED_WEIGHTS

    path = tmp_path / "truncated.safetensors"
    path.write_bytes(EMBEDDED_WEIGHTS.read_bytes()[:5000])
    _checkpoint_refused(tmp_path, capsys, path)


def test_checkpoint_that_is_a_folder(tmp_path, capsys, no_work):
    folder = tmp_path / "weights"
    folder.mkdir()
    assert "is a folder" in _checkpoint_refused(tmp_path, capsys, folder)


def test_checkpoint_of_another_architecture(small_vgg, tmp_path, capsys, no_work):
    from safetensors.torch import save_file

    path = tmp_path / "narrow.safetensors"
    save_file(small_vgg(0, width=1 / 16).state_dict(), str(path))  # the embedded model is 1/8 wide
    line = _checkpoint_refused(tmp_path, capsys, path)
    assert "size mismatch" in line or "Missing" in line or "Unexpected" in line


def test_pickle_checkpoint_for_torchvision_vgg(tmp_path, capsys, no_work):
    """The imagenet profile's torch.load(weights_only=True) refusal, on one line."""
    from PIL import Image

    folder = tmp_path / "val" / "n01440764"
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(folder / "a.png")

    path = tmp_path / "model.pth"
    torch.save({"net": Payload()}, path)  # needs pickle to load: refused, not executed
    argv = ["reproduce", "--no-progress", "--device", "cpu", "--workers", "0", "--profile", "imagenet",
            "--data", str(tmp_path), "--checkpoint", str(path), "--out", str(tmp_path / "out")]
    line = refused(argv, capsys)
    assert "checkpoint" in line and str(path) in line


def test_a_missing_imagenet_folder_says_how_to_get_it(tmp_path, capsys, no_work):
    argv = ["reproduce", "--no-progress", "--device", "cpu", "--profile", "imagenet", "--data",
            str(tmp_path / "missing"), "--out", str(tmp_path / "o")]
    assert "image-net.org" in refused(argv, capsys)
