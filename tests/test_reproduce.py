import json
import subprocess
import sys

import pytest
import torch

from lie_cam.data import smiley_target
from lie_cam.reproduce import PAPER_TABLE1, run_reproduction
from lie_cam.surgery import paper_networks


@pytest.fixture(scope="module")
def reproduction(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    return run_reproduction(profile="embedded", limit=60, batch_size=30, device="cpu", out=out, progress=False), out


def test_writes_every_file(reproduction):
    _, out = reproduction
    for name in ("table1.md", "table1.csv", "table2.md", "table2.csv", "results.json", "figure1.png", "figure3.png"):
        assert (out / name).stat().st_size > 0, name
    table1 = (out / "table1.md").read_text()
    assert "0.71592" in table1 and "T3" in table1  # the paper's numbers beside ours


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
    # the honest explanation points at the object; T2/T3's lies do not, nor T4's with stickers
    # (T1's flat map keeps the honest ripple on top, so its argmax says nothing; its L1 does)
    assert original["pointing"] >= 0.75
    for name in ("T2", "T3"):
        assert result.row(name)["pointing"] < original["pointing"] - 0.3, name
    assert result.row("T4", "sticker")["pointing"] < result.row("original", "sticker")["pointing"] - 0.3
    assert result.row("T1")["l1_median"] < 0.05


def test_t2_target_is_the_smiley_features():
    target = smiley_target()
    assert target.shape == (14, 14) and target.max() <= 1 and target.min() >= 0
    assert target[2:4, 4:6].mean() > target[0:2, 0:2].mean()  # an eye is bright, the corner dark


def test_cli_errors_are_clear(tmp_path):
    run = subprocess.run([sys.executable, "-m", "lie_cam", "reproduce", "--profile", "imagenet", "--data",
                          str(tmp_path / "missing"), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert run.returncode == 2
    assert "error:" in run.stderr and "image-net.org" in run.stderr


def test_unknown_profile_is_rejected():
    with pytest.raises(ValueError, match="profile"):
        run_reproduction(profile="cifar", out=None)
