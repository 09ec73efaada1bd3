"""mnist_jax.runfolder: the metric writer's three outputs and its progress lines, the workdir
(lock, no remote storage), the formats it reads."""

from __future__ import annotations

import io
import json
import logging
import signal
import struct
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest
from tensorboardX.proto import event_pb2

from mnist_jax import runfolder


def tensorboard_scalars(workdir: Path) -> dict[str, dict[int, float]]:
    """Every scalar of the event files in `workdir`, as TensorBoard reads them: tag -> step -> value,
    with a purge (a SessionLog.START at step s) dropping what was written at steps >= s before it."""
    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(workdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):  # TFRecord: length, crc, payload, crc
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 16 + length
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                for values in scalars.values():
                    for step in [s for s in values if s >= event.step]:
                        del values[step]
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def record(epoch: int, loss: float) -> dict:
    return {"epoch": epoch, "step": 10 * epoch, "learning_rate": 0.1, "train_loss": [loss, loss + 1],
            "train_accuracy": [0.5, 0.7], "images_per_s": 100.0, "wall_time_s": float(epoch)}


def test_metric_writer_writes_jsonl_and_tensorboard_and_resumes_cleanly(tmp_path):
    writer = runfolder.MetricWriter(tmp_path, num_epochs=3, resume_epoch=0, enabled=True)
    for epoch in (1, 2, 3):
        writer.write(record(epoch, loss=float(epoch)))
    writer.close()
    # A run resumed from its epoch-1 checkpoint trains epochs 2 and 3 again, differently.
    writer = runfolder.MetricWriter(tmp_path, num_epochs=3, resume_epoch=1, enabled=True)
    assert [r["epoch"] for r in runfolder.read_metrics(tmp_path)] == [1]
    for epoch in (2, 3):
        writer.write(record(epoch, loss=10.0 * epoch))
    writer.close()

    assert [r["train_loss"][0] for r in runfolder.read_metrics(tmp_path)] == [1.0, 20.0, 30.0]
    scalars = tensorboard_scalars(tmp_path)
    assert scalars["train_loss/member_0"] == {1: 1.0, 2: 20.0, 3: 30.0}
    assert scalars["train_loss/member_1"] == {1: 2.0, 2: 21.0, 3: 31.0}
    assert scalars["train_loss/mean"] == {1: 1.5, 2: 20.5, 3: 30.5}
    assert scalars["train_accuracy/mean"][3] == pytest.approx(0.6)
    assert scalars["learning_rate"] == pytest.approx({1: 0.1, 2: 0.1, 3: 0.1})  # float32
    assert "epoch" not in scalars and "step" not in scalars


def test_a_disabled_writer_touches_no_file(tmp_path):
    writer = runfolder.MetricWriter(tmp_path, num_epochs=1, resume_epoch=0, enabled=False)
    writer.write(record(1, loss=1.0))
    writer.close()
    assert list(tmp_path.iterdir()) == []


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_off_a_terminal_is_a_line_at_most_every_progress_seconds(tmp_path, monkeypatch, caplog):
    """A log file gets a plain line at most every `progress_seconds` (a fake clock here), each
    with the ETA of the epoch and of the run; an epoch's own line restarts the wait."""
    clock = [1000.0]
    monkeypatch.setattr(runfolder.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(runfolder.sys, "stderr", io.StringIO())
    caplog.set_level(logging.INFO)
    writer = runfolder.MetricWriter(tmp_path, num_epochs=3, resume_epoch=0, enabled=False,
                                    progress_seconds=30)

    def look(after_s: float, step: int, epoch: int = 1) -> None:
        clock[0] += after_s
        writer.progress(epoch, step, 100, 0.25, 0.9, 1234.4, eta_s=65, run_eta_s=3 * 3600 + 7 * 60)

    look(10, 10)  # 10 s into the epoch
    look(25, 35)  # 35 s: a line
    look(20, 55)  # 20 s after it
    look(15, 70)  # 35 s after it: a line
    clock[0] += 40
    writer.write(record(1, loss=1.0))  # the epoch's line
    look(20, 20, epoch=2)  # 20 s after it
    assert [r.getMessage() for r in caplog.records if "step" in r.getMessage()] == [
        f"epoch 1/3  step {step}/100  loss 0.2500 acc 0.9000  1234 img/s  ETA epoch 1m05s, run 3h07m"
        for step in (35, 70)]
    assert runfolder.sys.stderr.getvalue() == ""


def test_progress_on_a_terminal_is_the_bar_with_the_run_eta(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(runfolder.sys, "stderr", _Terminal())
    caplog.set_level(logging.INFO)
    writer = runfolder.MetricWriter(tmp_path, num_epochs=3, resume_epoch=0, enabled=False,
                                    progress_seconds=0)
    writer.progress(2, 50, 100, 0.25, 0.9, 1234.4, eta_s=45, run_eta_s=125)
    assert runfolder.sys.stderr.getvalue() == (
        "\repoch 2/3 [############------------] 50/100 loss 0.2500 acc 0.9000 1,234 img/s "
        "ETA    45s run  2m05s ")
    assert not caplog.records  # the bar, not the log


@pytest.mark.parametrize("url", ["gs://bucket/run", "s3://bucket/run", "file:///tmp/run"])
def test_a_workdir_on_remote_storage_is_refused_in_one_line(url, tmp_path, monkeypatch):
    """No 'gs:' folder appears locally: multi-host training needs one shared (mounted) filesystem."""
    from mnist_jax import analysis
    monkeypatch.chdir(tmp_path)
    for read in (runfolder.local_folder, analysis.load_run):
        with pytest.raises(runfolder.RunFolderError, match="one shared POSIX filesystem") as refused:
            read(url)
        assert url in str(refused.value) and "\n" not in str(refused.value)
    assert not any(tmp_path.iterdir())
    assert runfolder.local_folder(tmp_path / "runs" / "quick") == tmp_path / "runs" / "quick"


LOCK_HOLDER = """
import sys, time
from pathlib import Path
from mnist_jax import runfolder
with runfolder.lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_lock_refuses_a_second_trainer_until_the_first_is_killed(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(runfolder.RunFolderError,
                           match=rf"{tmp_path} is in use: process {holder.pid} is training in it"):
            with runfolder.lock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with runfolder.lock(tmp_path):  # kill -9 left the lock file, but not the lock
        assert (tmp_path / ".lock").read_text() == str(__import__("os").getpid())


def test_config_and_classes_round_trip_and_old_run_folders_still_read(tmp_path):
    config = ml_collections.ConfigDict({"model": "tiny20k", "num_members": 2})
    runfolder.write_config(tmp_path, config, ("a", "b"))
    read, names = runfolder.read_config(tmp_path, check=lambda c: None)
    assert read.to_dict() == config.to_dict() and names == ("a", "b")
    # Before classes.json, the class names rode inside config.json.
    (tmp_path / "classes.json").unlink()
    (tmp_path / "config.json").write_text(json.dumps({**config.to_dict(), "class_names": ["x"]}))
    read, names = runfolder.read_config(tmp_path, check=lambda c: None)
    assert read.to_dict() == config.to_dict() and names == ("x",)


def test_a_config_the_check_refuses_is_named(tmp_path):
    runfolder.write_config(tmp_path, ml_collections.ConfigDict({"num_members": 0}), ("a",))

    def check(config):
        raise ValueError("num_members must be >= 1")
    with pytest.raises(runfolder.RunFolderError, match="config.json is not a usable config "
                                                       r"\(num_members must be >= 1\)"):
        runfolder.read_config(tmp_path, check=check)
