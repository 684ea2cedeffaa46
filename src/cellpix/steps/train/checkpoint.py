"""Resumable training: weights, optimiser state, AHFL α and progress as safetensors + JSON, written atomically
after every epoch."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from cellpix.data.io import atomic_path
from cellpix.steps.train.loss import AdaptiveHierarchicalFocalLoss

if TYPE_CHECKING:
    from cellpix.steps.train.sgd import NesterovSGD


@dataclass
class TrainState:
    """What a checkpoint needs beyond the weights: progress, early stopping and history."""

    epoch: int = 0
    step: int = 0
    best_score: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    finished: bool = False


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | NesterovSGD,
                     loss_fn: AdaptiveHierarchicalFocalLoss, state: TrainState) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, pstate in opt["state"].items():
        for key, value in pstate.items():
            tensors[f"opt.{pid}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["loss.alpha"] = loss_fn.alpha.detach().cpu().reshape(1)
    meta = {"state": asdict(state), "param_groups": opt["param_groups"]}
    with atomic_path(path / "last.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"cellpix_checkpoint": json.dumps(meta)})


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | NesterovSGD,
                     loss_fn: AdaptiveHierarchicalFocalLoss) -> TrainState:
    from safetensors import safe_open

    file = path / "last.safetensors"
    with safe_open(str(file), framework="pt") as handle:
        meta = json.loads(handle.metadata()["cellpix_checkpoint"])
    tensors = load_file(str(file))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    loss_fn.alpha.copy_(tensors["loss.alpha"].reshape(()))
    return TrainState(**meta["state"])
