"""Training on several processes: ``torchrun --nproc_per_node=N -m tandem.cli train ...``.

torchrun starts N processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` set. When ``WORLD_SIZE > 1`` the :class:`~tandem.train.trainer.Trainer` joins
one process group (:func:`setup`: nccl on CUDA, each rank on ``cuda:LOCAL_RANK``; gloo on CPU)
and leaves it when the process exits. A single process is unchanged.

- ``--batch-size`` is the global batch; it must be divisible by N. Every rank draws the same
  global batch (windows, block offsets) from the shared seeded generator and keeps its own
  rows (:class:`Shard`), so N processes see exactly the windows of one. M_L, when run in the
  loop, runs on the rank's rows only.
- DistributedDataParallel averages the gradients of exactly the parameters the optimizer
  steps (:meth:`Dist.wrap`): the frozen shared embedding/head and the router (fitted after the
  loop) stay outside it, so every wrapped parameter gets a gradient each step and
  ``find_unused_parameters`` is not needed.
- Rank 0 writes checkpoints and the final model, fits the router (then broadcast to the
  others) and shows progress; the others wait at a barrier. State dicts are the unwrapped
  model's, so checkpoints and saved models are the same whatever N, and a run may resume
  with another N.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from tandem.errors import TrainingError


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of a global batch of ``total`` rows: what one rank trains on."""

    start: int
    stop: int
    total: int

    def take(self, rows: Tensor) -> Tensor:
        return rows[self.start:self.stop]


def shard_of(batch_size: int, rank: int, world: int) -> Shard:
    """Rank ``rank``'s equal share of a global batch of ``batch_size`` rows."""
    if batch_size % world:
        lower, upper = batch_size - batch_size % world, batch_size + world - batch_size % world
        choices = f"{lower} or {upper}" if lower else f"{upper}"
        raise TrainingError(
            f"--batch-size {batch_size} is the global batch, split evenly over the {world} processes; "
            f"it is not divisible by {world}: use a multiple of {world} (e.g. {choices}) "
            "or another --nproc_per_node")
    per = batch_size // world
    return Shard(rank * per, (rank + 1) * per, batch_size)


class _Trained(nn.Module):
    """What DistributedDataParallel wraps: the parameters the optimizer steps, and the training
    forward (which uses them through the model; DDP's gradient hooks sit on the parameters)."""

    def __init__(self, params: list[nn.Parameter], forward: Callable[..., Tensor]) -> None:
        super().__init__()
        self.trained = nn.ParameterList(params)
        self._run = forward

    def forward(self, *args: object) -> Tensor:
        return self._run(*args)


@dataclass
class Dist:
    """This process's place in the run; ``world == 1`` when it is not distributed."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device | None = None  # the device collectives run on (None: not distributed)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch_size: int) -> Shard | None:
        """This rank's rows of a global batch (None in a single process)."""
        return shard_of(batch_size, self.rank, self.world) if self.enabled else None

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(device_ids=[self.local_rank] if self.device.type == "cuda" else None)

    def total(self, value: Tensor) -> Tensor:
        """Sum of ``value`` over the ranks (a float tensor on this rank's device)."""
        if not self.enabled:
            return value
        value = value.detach().to(self.device, torch.float64)
        dist.all_reduce(value)
        return value

    def mean(self, value: float) -> float:
        """Mean of ``value`` over the ranks."""
        if not self.enabled:
            return value
        return self.total(torch.tensor(value, dtype=torch.float64)).item() / self.world

    def same(self, flag: bool, what: str) -> bool:
        """``flag``, checked to be the same on every rank (else a TrainingError on every rank)."""
        if not self.enabled:
            return flag
        votes = self.total(torch.tensor(float(flag), dtype=torch.float64)).item()
        if votes not in (0, self.world):
            raise TrainingError(f"{what} on {int(votes)} of {self.world} processes only; every process must see "
                                "the same files (put --out on a file system they share)")
        return flag

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers of ``module``, copied in place on every rank."""
        if self.enabled:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def broadcast_object(self, value: object) -> object:
        """Rank 0's ``value`` (picklable) on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def wrap(self, params: list[nn.Parameter], forward: Callable[..., Tensor]) -> DistributedDataParallel | None:
        """``forward`` with DistributedDataParallel over ``params`` (None in a single process).

        ``params`` must be exactly the parameters the optimizer steps, each used by every
        forward: DDP then averages all of them after each backward, with no unused-parameter scan."""
        if not self.enabled:
            return None
        cuda = self.device.type == "cuda"
        # _Trained holds no buffers (M_S's rotary tables are the same on every rank): nothing to sync but grads
        return DistributedDataParallel(_Trained(params, forward), device_ids=[self.local_rank] if cuda else None)


_OWNED = False  # whether this module started the process group (and so ends it at exit)


def world_size_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise TrainingError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """This process's :class:`Dist` and training device.

    Under torchrun (``WORLD_SIZE > 1``) joins the process group from the environment, once per
    process (nccl for CUDA, the rank on ``cuda:LOCAL_RANK``; gloo for CPU), and leaves it at exit.
    A process group started by the caller is used as it is. A single process: ``Dist()`` and
    ``device`` unchanged.
    """
    global _OWNED
    if not dist.is_available() or (not dist.is_initialized() and world_size_from_env() <= 1):
        return Dist(), device
    if dist.is_initialized() and dist.get_world_size() == 1:
        return Dist(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if "LOCAL_RANK" in os.environ else None
    if device.type == "cuda":
        if local_rank is None:
            local_rank = (dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))) \
                % torch.cuda.device_count()
        if local_rank >= torch.cuda.device_count():
            raise TrainingError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are "
                                "visible; start at most that many processes per machine (--nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
        if missing:
            raise TrainingError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start "
                                "several processes with torchrun (torchrun --nproc_per_node=N -m tandem.cli train ...)")
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        _OWNED = True
        atexit.register(shutdown)
    rank, world = dist.get_rank(), dist.get_world_size()
    return Dist(rank, world, rank if local_rank is None else local_rank, device), device


def shutdown() -> None:
    """Leave the process group if :func:`setup` started it (also run at exit)."""
    global _OWNED
    if _OWNED and dist.is_initialized():
        dist.destroy_process_group()
    _OWNED = False

