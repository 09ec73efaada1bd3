"""experiments/analysis.ipynb: the committed copy shows its outputs (GitHub renders them), and the
notebook runs top to bottom on small real runs trained here, so a library change cannot break it
unnoticed."""

from __future__ import annotations

from pathlib import Path

import ml_collections
import nbformat
import pytest
from nbclient import NotebookClient

from mnist_jax import config as config_lib, train

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "experiments" / "analysis.ipynb"


def small_config(seed: int = 0, groups: dict | None = None) -> ml_collections.ConfigDict:
    """The quick config cut to seconds: 1,024 training images, 1 epoch, 1,000 validation images."""
    config = config_lib.from_file(REPO / "configs" / "quick.py")
    config.train_subset, config.num_epochs, config.validation_size = 1024, 1, 1000
    config.num_members, config.log_every_steps, config.seed = 2, 4, seed
    config.groups = ml_collections.ConfigDict(groups or {})
    return config


def test_the_committed_notebook_shows_its_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    outputs = [output for cell in code for output in cell.outputs]
    rerun = "re-run it: .venv/bin/jupyter-execute --inplace experiments/analysis.ipynb"
    assert all(cell.outputs for cell in code), rerun
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)


@pytest.mark.slow
def test_the_notebook_runs_on_small_runs(mnist_dir, data_root, tmp_path, monkeypatch):
    # data_root exports MNIST_JAX_DATA_ROOT: the out-of-distribution section reads Fashion-MNIST.
    runs = {"MNIST_JAX_RUN": small_config(),
            "MNIST_JAX_OTHER_RUN": small_config(seed=2),
            "MNIST_JAX_GROUPED_RUN": small_config(groups={"a": {"num_members": 1},
                                                          "b": {"num_members": 1}})}
    for variable, config in runs.items():
        workdir = tmp_path / variable.lower()
        train.train_and_evaluate(config, workdir)
        monkeypatch.setenv(variable, str(workdir))  # the kernel inherits the environment
    notebook = nbformat.read(NOTEBOOK, as_version=4)  # in memory: the committed file stays as is
    # From experiments/, where Jupyter starts a notebook's kernel; CellExecutionError names the
    # failing cell and its traceback.
    NotebookClient(notebook, kernel_name="python3", timeout=300,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 10
