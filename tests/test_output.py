"""Every command's output folder is complete or untouched (issue 23): the files are staged beside it and
moved in together, an interruption of the write phase leaves the earlier run exactly as it was, each
command's run record has its own name, and an output path no run could write is refused before work."""

import json
import signal
from pathlib import Path

import pytest

import lie_cam.experiments.engine
from lie_cam.cli import main
from lie_cam.experiments import detection, matrix, precision
from lie_cam.experiments.output import check_output_dir, held_signals, staged_output
from lie_cam.experiments.report import OUTPUT_FILES, PAPER_TABLE1, PAPER_TABLE2, Reproduction

SHIPPED_MATRIX = Path(__file__).resolve().parent.parent / "data" / "explainers"


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def no_leftovers(out: Path) -> None:
    assert not [p for p in [*out.parent.iterdir(), *(out.iterdir() if out.is_dir() else [])] if "partial" in p.name]


def reproduction(n: int, figures: bool = True) -> Reproduction:
    """A Reproduction with made-up rows for `n` images (the writing is what is tested)."""
    keys = [("clean", k) for k in PAPER_TABLE1] + [("clean", "T4")] + [k for k in PAPER_TABLE2 if k[0] == "sticker"]
    rows = [{"network": network, "data": data, "accuracy": 0.5, "n": n, "pointing": 0.5,
             "score_change": None if network == "original" else 0.001,
             "l1": None if network == "original" else 0.01} for data, network in keys]
    return Reproduction("embedded", f"{n} made-up scenes", rows, {"figures": figures} if figures else {}, 1.0,
                        {"limit": n})


@pytest.fixture
def fake_figures(monkeypatch):
    """Reproduction.write_figures writes two small files, or raises KeyboardInterrupt once told to."""
    state = {"interrupt": False}

    def write_figures(self, out):
        if state["interrupt"]:
            raise KeyboardInterrupt
        paths = [out / "figure1.png", out / "figure3.png"]
        for path in paths:
            path.write_bytes(f"{self.description}".encode())
        return paths

    monkeypatch.setattr(Reproduction, "write_figures", write_figures)
    return state


def test_an_interrupted_reproduction_leaves_the_earlier_run(tmp_path, fake_figures):
    out = tmp_path / "results"
    reproduction(200).write(out)
    (out / "notes.txt").write_text("the user's own file")
    earlier = contents(out)
    assert set(earlier) == {*OUTPUT_FILES, "notes.txt"}
    fake_figures["interrupt"] = True  # after the tables, results.json and reproduce.json were written
    with pytest.raises(KeyboardInterrupt):
        reproduction(20).write(out)
    assert contents(out) == earlier  # before the patch: n = 20 tables beside the n = 200 figures
    no_leftovers(out)
    fake_figures["interrupt"] = False
    written = reproduction(20, figures=False).write(out)
    now = contents(out)
    assert "figure1.png" not in now and "figure3.png" not in now  # the earlier run's figures are not mixed in
    assert json.loads(now["results.json"])[0]["n"] == 20 and now["notes.txt"] == b"the user's own file"
    assert sorted(p.name for p in written) == sorted(set(OUTPUT_FILES) - {"figure1.png", "figure3.png"})
    no_leftovers(out)


def test_an_interrupted_first_run_leaves_nothing(tmp_path, fake_figures):
    fake_figures["interrupt"] = True
    with pytest.raises(KeyboardInterrupt):
        reproduction(20).write(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


def test_reproduce_and_explainers_share_a_folder(tmp_path, fake_figures, monkeypatch):
    out = tmp_path / "both"
    reproduction(200).write(out)
    shipped = matrix.load_matrix(SHIPPED_MATRIX)
    matrix.write_matrix(shipped, out)
    files = contents(out)
    assert set(files) == {*OUTPUT_FILES, *matrix.MATRIX_FILES}
    assert json.loads(files["reproduce.json"])["settings"] == {"limit": 200}  # not replaced by the matrix's record
    assert matrix.load_matrix(out).settings == shipped.settings and matrix.load_matrix(out).errors == shipped.errors

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(matrix, "_matrix_md_document", interrupted)  # after matrix.json and explainers.json
    shipped.rows = shipped.rows[:3]
    with pytest.raises(KeyboardInterrupt):
        matrix.write_matrix(shipped, out)
    assert contents(out) == files
    no_leftovers(out)


def test_signals_are_held_during_the_moves_and_delivered_after():
    # Python's own SIGINT handler for the test, whatever an earlier test in this worker left installed
    # (one did, under pytest-xdist: the interrupt was then delivered to a handler that swallowed it).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with held_signals():
                signal.raise_signal(signal.SIGINT)
                reached = True
        assert reached
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_staged_output_with_an_error_leaves_the_folder(tmp_path):
    out = tmp_path / "o"
    with staged_output(out, ["a.txt"]) as stage:
        (stage / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with staged_output(out, ["a.txt"]) as stage:
            (stage / "a.txt").write_text("second")
            raise RuntimeError("the run failed")
    assert contents(out) == {"a.txt": b"first"}
    no_leftovers(out)


@pytest.mark.parametrize("bad,expected", [("", "--out is empty"), ("/proc/lie_cam/out", "cannot write"),
                                          (" ", "--out is empty")])
def test_an_output_no_run_could_write_is_refused(bad, expected):
    with pytest.raises((ValueError, OSError), match=expected):
        check_output_dir(bad)


@pytest.fixture
def no_work(monkeypatch):
    def started(*args, **kwargs):
        raise AssertionError("the work started before --out was checked")

    monkeypatch.setattr(lie_cam.experiments.engine.Evaluator, "__init__", started)
    monkeypatch.setattr(matrix, "run_explainers", started)
    monkeypatch.setattr(detection, "run_detection", started)
    monkeypatch.setattr(precision, "write_precision", started)


COMMANDS = [["reproduce", "--no-progress", "--device", "cpu", "--limit", "2"], ["explainers", "--limit", "1"],
            ["detect"], ["precision", "--limit", "1"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("bad,expected", [("", "--out is empty"), ("/proc/lie_cam/out", "cannot write")])
def test_every_command_refuses_an_unwritable_out_before_work(command, bad, expected, tmp_path, monkeypatch, capsys,
                                                              no_work):
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--out", bad]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written into the current folder


def test_the_library_functions_refuse_an_empty_out(monkeypatch):
    from lie_cam.experiments import reproduce

    monkeypatch.setattr(reproduce, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ValueError, match="--out is empty"):
        reproduce.run_reproduction(out="", limit=2, device="cpu", progress=False)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="--out is empty"):
        precision.write_precision("", limit=1)
    with pytest.raises(ValueError, match="--out is empty"):
        detection.run_detection("")
