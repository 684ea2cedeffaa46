"""Training survives a real kill, and runs under torchrun DDP with gloo on CPU."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cellpix.core.trained import TrainedModel
from cellpix.steps.train.data import stratified_split


@pytest.fixture(scope="module")
def small_reference(zheng_ref, zheng_layout, tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    labels = zheng_ref.obs["cell_type"].astype(str).to_numpy()
    _, subset = stratified_split(labels, 0.25, seed=2)
    zheng_ref[subset].copy().write_h5ad(folder / "ref.h5ad")
    zheng_layout.save(folder / "layout.json")
    return folder


def train_args(folder: Path, output: Path, epochs: int) -> list[str]:
    # The trunk preset: the read-out alone finishes 5 epochs within a second of its first checkpoint, before the
    # test can kill it; the trunk makes each epoch long enough to be interrupted, and its optimiser has state.
    return ["train", "--preset", "trunk", str(folder / "ref.h5ad"), "--layout", str(folder / "layout.json"),
            "--labels", "cell_type",
            "--hierarchy", "pbmc-sorted", "-o", str(output), "--epochs", str(epochs), "--batch-size", "32",
            "--patience", "50", "--device", "cpu", "--quiet"]


def test_killed_training_resumes_and_finishes(small_reference, tmp_path):
    output = tmp_path / "m.cellpix"
    ckpt = tmp_path / "m.cellpix.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "cellpix", *train_args(small_reference, output, 5)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not (ckpt / "last.safetensors").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.5)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not output.exists(), "a killed run must not leave a bundle"
    resumed = subprocess.run([sys.executable, "-m", "cellpix", *train_args(small_reference, output, 5), "--resume"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    history = TrainedModel.load(output).metadata["training"]["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5]


def test_ddp_on_gloo_with_two_processes(small_reference, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    output = tmp_path / "ddp.cellpix"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "cellpix",
                             *train_args(small_reference, output, 6)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("model →") == 1, "only rank 0 writes the bundle"
    model = TrainedModel.load(output)
    assert model.metadata["training"]["epochs_run"] == 6
    assert all(row["train_loss"] > 0 for row in model.metadata["training"]["history"]), "every epoch took steps"
    assert model.metadata["training"]["validation_metrics"]["val_base_f1"] > 0.4  # 5 lineages
