"""The read-out's SGD is torch's, step for step, on the committed real fixture (a fresh clone)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

import cellpix.steps.train.trainer as trainer
from cellpix.steps.train.sgd import NesterovSGD

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def fixture_reference():
    import cellpix as cx

    raw = ad.read_h5ad(DATA / "zheng_reference.h5ad")
    reference = cx.integrate(raw, cx.QCOptions(n_top_genes=500, min_genes=100))
    return reference, cx.fit_layout(reference)


def _train(reference, layout, seed: int):
    import cellpix as cx

    return cx.train(reference, layout, "pbmc-sorted", "cell_type", cx.TrainConfig(epochs=4, seed=seed),
                    progress=False)


@pytest.mark.parametrize("seed", [0, 1])
def test_training_with_nesterov_sgd_leaves_torch_sgds_weights_bit_for_bit(fixture_reference, monkeypatch, seed):
    reference, layout = fixture_reference
    ours = _train(reference, layout, seed)
    monkeypatch.setattr(trainer, "NesterovSGD", lambda groups, lr, momentum: torch.optim.SGD(
        groups, lr=lr, momentum=momentum, nesterov=True))
    theirs = _train(reference, layout, seed)
    assert ours.weights.keys() == theirs.weights.keys()
    for name, value in ours.weights.items():
        assert np.array_equal(value, theirs.weights[name]), name
    # the run learned: the two weight sets are not the untrained ones
    assert ours.metadata["training"]["validation_metrics"]["val_base_f1"] > 0.8


def _net_and_groups(seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    return net, [{"params": list(net[0].parameters()), "weight_decay": 1e-2},
                 {"params": list(net[2].parameters()), "weight_decay": 1e-4}]


def test_optimiser_state_round_trips_in_torchs_layout():
    (ours_net, ours_groups), (theirs_net, theirs_groups) = _net_and_groups(), _net_and_groups()
    ours = NesterovSGD(ours_groups, lr=0.05)
    theirs = torch.optim.SGD(theirs_groups, lr=0.05, momentum=0.9, nesterov=True)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for net, optimiser in ((ours_net, ours), (theirs_net, theirs)):
        for _ in range(3):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            optimiser.step()
    saved, reference = ours.state_dict(), theirs.state_dict()
    assert [g["params"] for g in saved["param_groups"]] == [g["params"] for g in reference["param_groups"]]
    for index, values in reference["state"].items():
        assert torch.equal(saved["state"][index]["momentum_buffer"], values["momentum_buffer"])
    restored = NesterovSGD(_net_and_groups()[1], lr=1.0)
    restored.load_state_dict(reference)  # a checkpoint torch's SGD wrote resumes here
    assert restored.param_groups[1]["lr"] == 0.05 and restored.param_groups[0]["weight_decay"] == 1e-2
    assert all(torch.equal(restored.state_dict()["state"][i]["momentum_buffer"], v["momentum_buffer"])
               for i, v in reference["state"].items())
    with pytest.raises(ValueError):
        NesterovSGD(ours_groups[:1], lr=0.05).load_state_dict(reference)
