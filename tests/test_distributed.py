"""The reproduction on several processes (torchrun, gloo on CPU) equals the one-process run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lie_cam.experiments.distributed import Group, all_gather_counts, all_reduce, device_for, gather_values, shard
from lie_cam.experiments.reproduce import run_reproduction


@pytest.mark.parametrize("n, batch_size, world_size", [(26, 6, 2), (100, 10, 3), (5, 6, 2), (0, 4, 2), (7, 1, 7),
                                                        (50, 50, 4)])
def test_shards_are_whole_batches_without_overlap_or_loss(n, batch_size, world_size):
    shards = [shard(n, batch_size, rank, world_size) for rank in range(world_size)]
    assert [i for s in shards for i in s] == list(range(n))  # in order: no overlap, nothing lost
    for s in filter(len, shards):
        assert s.start % batch_size == 0 and (s.stop % batch_size == 0 or s.stop == n)
    sizes = [-(-len(s) // batch_size) for s in shards]  # batches per rank
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    if n:
        assert 0 in shards[0]


def test_shard_rejects_nonsense():
    with pytest.raises(ValueError):
        shard(10, 0, 0, 1)
    with pytest.raises(ValueError):
        shard(10, 2, 2, 2)


def test_one_process_collectives_are_identities(monkeypatch):
    import torch

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    values = torch.tensor([3.0, 1.0])
    one = Group()
    assert all_reduce(values, "max", one) is values and gather_values(values, one) is values
    assert all_gather_counts(4, one) == [4]
    assert device_for("cpu").type == "cpu"


def test_several_processes_refuse_a_fixed_gpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match="--device cuda"):
        device_for("cuda:0")


def _torchrun() -> list[str]:
    found = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    return [found] if found else [sys.executable, "-m", "torch.distributed.run"]


def test_torchrun_two_processes_equal_one(tmp_path):
    """26 images in batches of 6: rank 0 evaluates 3 batches (18 images), rank 1 two (8)."""
    limit, batch = 26, 6
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    command = [*_torchrun(), "--standalone", "--nproc-per-node", "2", "-m", "lie_cam", "reproduce", "--limit",
               str(limit), "--batch-size", str(batch), "--workers", "0", "--device", "cpu", "--no-progress",
               "--out", str(tmp_path / "two")]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("Table 1") == 1  # rank 0 prints, rank 1 does not
    # torchrun gives each process one thread; float32 sums in another order (two threads) round differently,
    # so the one-process reference runs on one thread too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run_reproduction(profile="embedded", limit=limit, batch_size=batch, device="cpu", workers=0,
                                  progress=False, out=tmp_path / "one")
    finally:
        torch.set_num_threads(threads)
    ours = json.loads((tmp_path / "two" / "results.json").read_text())
    assert [(r["network"], r["data"]) for r in ours] == [(r["network"], r["data"]) for r in single.rows]
    exact = ("n", "accuracy", "pointing", "score_change_max", "l1_median", "alpha_extra_nonpositive")
    for mine, reference in zip(ours, single.rows):
        assert set(mine) == set(reference)
        for key, value in reference.items():
            if key in ("network", "data") or value is None or key in exact:
                assert mine[key] == value, (mine["network"], mine["data"], key)
            else:
                assert mine[key] == pytest.approx(value, rel=1e-6, abs=1e-300), (mine["network"], mine["data"], key)
    info = json.loads((tmp_path / "two" / "reproduce.json").read_text())
    assert info["world_size"] == 2 and info["images_per_rank"] == [18, 8] and info["backend"] == "gloo"
    assert single.run["world_size"] == 1 and single.run["images_per_rank"] == [limit]
    for name in ("figure1.png", "figure3.png", "table1.md", "table2.csv"):
        assert (tmp_path / "two" / name).stat().st_size > 0, name
