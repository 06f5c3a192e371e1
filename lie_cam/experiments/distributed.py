"""One evaluation over several processes or machines, through torch.distributed.

`torchrun --nproc-per-node N -m lie_cam reproduce ...` starts N processes with RANK,
WORLD_SIZE and LOCAL_RANK in their environment. Each process evaluates one shard of the
images; the table's entries are then combined from per-process sums:

    count_total = sum_r count_r,    sum_total = sum_r sum_r,    max_total = max_r max_r,

so means (sum / count) equal the one-process run up to the order of float64 additions,
counts and maxima exactly. Medians need the per-image values: they are gathered.

Shards are whole batches: with B images per batch, batch b holds images [bB, (b+1)B), and
rank r takes a contiguous run of batches, the first ranks one more when they do not divide
evenly. Every image is therefore evaluated in the same batch, with the same neighbours, as
in a one-process run with the same batch size. Backend: NCCL for CUDA devices, gloo for CPUs.
Nothing here starts a process group by itself except `init`.
"""

from __future__ import annotations

import datetime
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Group", "launched", "rank_from_environment", "init", "current", "shard", "device_for", "all_reduce", "all_gather_counts",
           "gather_values", "close"]


@dataclass(frozen=True)
class Group:
    """Where this process stands: rank r of world_size processes (local_rank on its machine)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Whether this process writes the results (rank 0)."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """Where the collectives' tensors live: the local GPU for NCCL, else the CPU."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")


def _environment_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"the environment variable {name}={value!r} must be an integer (torchrun sets it)") from None


def rank_from_environment() -> int:
    """This process's RANK as the launcher set it (0 without a launcher), before any group exists."""
    return _environment_int("RANK", 0)


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) with WORLD_SIZE > 1."""
    return _environment_int("WORLD_SIZE", 1) > 1


def device_for(requested: str | torch.device | None) -> torch.device:
    """The device of this process: under a launcher a CUDA request (or the default, when there is
    a GPU) means the GPU of LOCAL_RANK; an explicit index is refused there (each process would
    take the same GPU). Without a launcher: the request, or the first GPU, or the CPU."""
    local_rank = _environment_int("LOCAL_RANK", 0)
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda" and launched():
        if device.index is not None:
            raise ValueError(f"with several processes give --device cuda (process LOCAL_RANK i takes GPU i), "
                             f"not {device}")
        return torch.device("cuda", local_rank)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", 0)
    return device


def init(device: torch.device, timeout_s: float = 1800.0) -> Group:
    """Join the process group the launcher describes (NCCL for a CUDA device, else gloo).
    Without a launcher (WORLD_SIZE unset or 1) nothing is started and the group is one process."""
    if not launched():
        return Group()
    if dist.is_initialized():
        return current()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # device_id (torch >= 2.3) binds the NCCL communicator to this process's GPU at once
    accepts_device = "device_id" in inspect.signature(dist.init_process_group).parameters
    kwargs = {"device_id": device} if device.type == "cuda" and accepts_device else {}
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return current()


def current() -> Group:
    """The process group this process belongs to (a one-process group when none was started)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Group()
    return Group(rank=dist.get_rank(), world_size=dist.get_world_size(),
                 local_rank=_environment_int("LOCAL_RANK", dist.get_rank()), backend=dist.get_backend())


def close() -> None:
    """Leave the process group, if one was started."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int, batch_size: int, rank: int, world_size: int) -> range:
    """Image indices of rank `rank`: a contiguous run of whole batches of `batch_size`.

    The ceil(n / batch_size) batches are split into world_size runs whose lengths differ by
    at most one (the longer runs first), so the shards are disjoint, cover 0..n-1, and rank 0
    holds image 0. A rank may get no images when there are fewer batches than ranks."""
    if n < 0 or batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need n >= 0, batch_size >= 1 and 0 <= rank < world_size, got {n}, {batch_size}, "
                         f"{rank}, {world_size}")
    batches = -(-n // batch_size)
    per_rank, extra = divmod(batches, world_size)
    first = rank * per_rank + min(rank, extra)
    count = per_rank + (rank < extra)
    return range(min(n, first * batch_size), min(n, (first + count) * batch_size))


def all_reduce(tensor: torch.Tensor, op: str = "sum", group: Group | None = None) -> torch.Tensor:
    """The elementwise sum ("sum") or maximum ("max") of `tensor` over all processes, returned
    on the tensor's own device; the tensor itself when there is one process."""
    group = current() if group is None else group
    if group.world_size == 1:
        return tensor
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
    if op not in ops:
        raise ValueError(f"op must be 'sum' or 'max', got {op!r}")
    work = tensor.to(group.device).clone()
    dist.all_reduce(work, op=ops[op])
    return work.to(tensor.device)


def all_gather_counts(count: int, group: Group | None = None) -> list[int]:
    """[count of rank 0, count of rank 1, ...]: one integer from every process."""
    group = current() if group is None else group
    if group.world_size == 1:
        return [int(count)]
    mine = torch.tensor([int(count)], dtype=torch.int64, device=group.device)
    everyone = [torch.zeros_like(mine) for _ in range(group.world_size)]
    dist.all_gather(everyone, mine)
    return [int(c.item()) for c in everyone]


def gather_values(values: torch.Tensor, group: Group | None = None) -> torch.Tensor:
    """The 1-D tensors of all processes concatenated in rank order (lengths may differ)."""
    group = current() if group is None else group
    if values.dim() != 1:
        raise ValueError(f"expected a 1-D tensor, got shape {tuple(values.shape)}")
    if group.world_size == 1:
        return values
    lengths = all_gather_counts(values.numel(), group)
    longest = max(lengths)
    padded = torch.zeros(longest, dtype=values.dtype, device=group.device)
    padded[: values.numel()] = values.to(group.device)
    everyone = [torch.empty_like(padded) for _ in lengths]
    dist.all_gather(everyone, padded)
    return torch.cat([part[:length] for part, length in zip(everyone, lengths)]).to(values.device)
