"""The command line a user types: every mistake ends in one line and exit code 2, nothing else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mnist_jax import run as run_lib, runfolder

REPO = Path(__file__).resolve().parents[1]


def run_main(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnist_jax.main", *args], capture_output=True,
                          text=True, timeout=300, cwd=REPO)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mnist_jax: error: "), proc.stderr
    return lines[0]


@pytest.mark.parametrize("args, message", [
    (["--config.num_member=3"], "unknown field 'num_member'; did you mean 'num_members'?"),
    (["--config.optim.schedule.nme=constant"], "did you mean 'optim.schedule.name'?"),
    (["--config.num_members=abc"], "--config.num_members=abc: invalid literal for int()"),
    (["--config.num_members=0"], "num_members must be >= 1, got 0"),
])
def test_config_mistakes_are_one_line(tmp_path, args, message):
    line = one_error_line(run_main("--config=configs/quick.py", f"--workdir={tmp_path}", *args))
    assert message in line
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_missing_config_file_and_workdir_are_one_line(tmp_path):
    assert "no config file nope.py" in one_error_line(
        run_main("--config=nope.py", f"--workdir={tmp_path}"))
    assert "--workdir" in one_error_line(run_main("--config=configs/quick.py"))
    assert "takes one of m3, m5, m7" in one_error_line(
        run_main("--config=configs/simple.py:m9", f"--workdir={tmp_path}"))


def test_a_second_trainer_on_a_workdir_is_refused(mnist_dir, tmp_path):
    with runfolder.lock(tmp_path):
        proc = run_main("--config=configs/quick.py", f"--workdir={tmp_path}",
                        "--config.train_subset=512", "--config.validation_size=100")
    line = one_error_line(proc)
    assert f"{tmp_path} is in use" in line and "use another --workdir" in line
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "checkpoints").exists()
    assert "tpu" not in proc.stderr.lower()  # JAX's TPU probe line is gone on CPU runs


def test_a_workdir_that_is_a_file_is_one_line(mnist_dir, tmp_path):
    workdir = tmp_path / "taken"
    workdir.write_text("not a folder")
    line = one_error_line(run_main("--config=configs/quick.py", f"--workdir={workdir}",
                                   "--config.train_subset=512", "--config.validation_size=100"))
    assert str(workdir) in line


def test_a_model_field_the_config_file_left_unset_can_be_set_on_the_command_line(mnist_dir, tmp_path):
    proc = run_main("--config=configs/tiny20k.py", f"--workdir={tmp_path}",
                    "--config.model_overrides.features=(8, 16, 24)", "--config.model_overrides.hidden=40",
                    "--config.train_subset=512", "--config.validation_size=100", "--config.num_epochs=1")
    assert proc.returncode == 0, proc.stderr
    config, _ = runfolder.read_config(tmp_path, check=run_lib.validate)
    assert config.model_overrides.to_dict() == {"features": [8, 16, 24], "hidden": 40}  # JSON
    assert runfolder.read_results(tmp_path)["num_members"] == 1  # it trained with them



@pytest.mark.parametrize("arg, message", [
    ("--config.model_overrides.widht=3", "model 'tiny20k' has no field 'widht'"),
    ("--config.model_overrides.hidden=abc", "field 'hidden' must be"),
    ("--config.groups.nope.model_overrides.hidden=3", "unknown field 'groups.nope.model_overrides.hidden'"),
])
def test_a_bad_model_field_on_the_command_line_is_one_line(tmp_path, arg, message):
    line = one_error_line(run_main("--config=configs/tiny20k.py", f"--workdir={tmp_path}", arg))
    assert message in line
    assert not any(tmp_path.iterdir())


def test_a_workdir_on_remote_storage_is_one_line_and_no_local_folder_appears(tmp_path):
    """`--workdir=gs://bucket/run` would have become a local folder 'gs:/bucket/run' on each host:
    refused, by the trainer and the evaluator, naming the shared filesystem multi-host needs."""
    for command in ([sys.executable, "-m", "mnist_jax.main", f"--config={REPO / 'configs' / 'quick.py'}"],
                    [sys.executable, "-m", "mnist_jax.evaluate_main"]):
        proc = subprocess.run([*command, "--workdir=gs://bucket/run"], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "error: workdir gs://bucket/run: remote storage" in lines[0], proc.stderr
        assert "one shared POSIX filesystem" in lines[0]
    assert not any(tmp_path.iterdir())
