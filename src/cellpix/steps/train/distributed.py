"""Ranks under ``torchrun`` (DDP) and the device: who writes results, how an epoch's chunks are shared so
that every rank takes the same number of steps."""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.distributed as dist

from cellpix.data.runtime import check_device
from cellpix.steps.train.config import TrainConfig
from cellpix.steps.train.data import (
    ReferenceData,
    batches_in,
    epoch_chunks,
)


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Whether this process writes results: always outside torchrun, only rank 0 under it (read from torchrun's
    ``RANK`` so that it holds before and after the process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device: torch.device) -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return True
    return False


def mean_across_ranks(values: list[float]) -> list[float]:
    _, world = rank_and_world()
    if world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return (tensor / world).tolist()


def pick_device(name: str) -> torch.device:
    """The training device: ``auto`` is this rank's GPU when there is one, else the CPU; a name torch does not
    know, or a GPU this machine lacks, is refused in one line (:func:`cellpix.data.runtime.check_device`)."""
    check_device(name)
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device(f"cuda:{local}")
        return torch.device("cpu")
    return torch.device(name)


def passes_per_epoch(n_train: int, config: TrainConfig, world: int = 1) -> int:
    """How many times an epoch goes over the training cells so that it takes ``min_epoch_steps`` steps."""
    steps_per_pass = max(1, n_train // max(1, config.batch_size * world))
    return max(1, math.ceil(config.min_epoch_steps / steps_per_pass))


def rank_chunks(data: ReferenceData, config: TrainConfig, world: int, epoch: int) -> list[np.ndarray]:
    """This epoch's chunks; under DDP they are made small enough that every rank gets several.

    A small reference is gone over several times per epoch (:func:`passes_per_epoch`), each pass block-shuffled
    on its own, so no chunk holds a cell twice.
    """
    size = config.chunk_size if world == 1 else min(config.chunk_size, max(64, len(data.train_idx) // (world * 4)))
    passes = passes_per_epoch(len(data.train_idx), config, world)
    return [chunk for p in range(passes)
            for chunk in epoch_chunks(data.train_idx, size, seed=config.seed * 1000 + epoch + 7919 * p)]


def steps_per_rank(data: ReferenceData, config: TrainConfig, world: int, epoch: int) -> int:
    """Every rank must take the same number of steps, or DDP waits forever; use the smallest share."""
    chunks = rank_chunks(data, config, world, epoch)
    return min(batches_in(chunks[r::world], config.batch_size) for r in range(world)) if world > 1 else \
        batches_in(chunks, config.batch_size)
