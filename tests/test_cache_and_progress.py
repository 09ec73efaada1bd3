"""What `python -m mnist_jax.main` keeps and says across a run: its compiled programs on disk, and
progress lines with ETAs in a log file."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ("--config=configs/quick.py", "--config.num_members=2", "--config.num_epochs=1",
        "--config.train_subset=512", "--config.validation_size=500")
# JAX's own compile log (JAX_LOG_COMPILES=1): one line per program, loaded from the cache or not.
COMPILED = re.compile(r"Finished XLA compilation of .* in ([\d.]+) sec")


@pytest.mark.slow
def test_a_second_run_compiles_less_and_adds_nothing_to_the_cache(mnist_dir, tmp_path):
    """By default main keeps its programs in $MNIST_JAX_CACHE_DIR/jax: the same config run again
    (another workdir) loads them, and the cache holds the same files after it."""
    env = {k: v for k, v in os.environ.items()  # main's default, not the suite's cache
           if k not in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
    env.update(MNIST_JAX_CACHE_DIR=str(tmp_path / "cache"), JAX_LOG_COMPILES="1")
    cache = tmp_path / "cache" / "jax"

    def run(name: str) -> tuple[float, int, list[str]]:
        proc = subprocess.run([sys.executable, "-m", "mnist_jax.main", f"--workdir={tmp_path / name}", *TINY],
                              env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-3000:]
        seconds = sum(float(s) for s in COMPILED.findall(proc.stderr))
        return seconds, proc.stderr.count("Persistent compilation cache hit"), sorted(os.listdir(cache))

    first_s, first_hits, files = run("first")
    second_s, second_hits, files_after = run("second")
    assert first_hits == 0 and files  # the first run filled the cache
    assert second_hits >= 1 and second_s < first_s, (first_s, second_s)
    assert files_after == files


@pytest.mark.slow
def test_off_a_terminal_a_run_logs_progress_with_the_etas_within_its_epochs(mnist_dir, tmp_path):
    """Output sent to a file, `progress_seconds=2`: lines inside the epochs, at least 2 s apart
    (an epoch's own line restarts the wait), each with the ETA of the epoch and of the run."""
    log = tmp_path / "log.txt"
    with log.open("w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "mnist_jax.main", f"--workdir={tmp_path / 'run'}", *TINY,
             "--config.num_epochs=2", "--config.train_subset=6400", "--config.log_every_steps=2",
             "--config.progress_seconds=2"],
            stdout=out, stderr=subprocess.STDOUT, timeout=600, cwd=REPO)
    lines = log.read_text().splitlines()
    assert proc.returncode == 0, "\n".join(lines[-30:])
    duration = r"(\d+s|\d+m\d\ds|\d+h\d\dm)"
    progress = re.compile(rf"epoch (\d)/2  step (\d+)/50  loss \S+ acc \S+  \d+ img/s  "
                          rf"ETA epoch {duration}, run {duration}$")
    epoch_end = re.compile(r"epoch (\d)/2  train loss")
    seen, last = [], None
    for line in lines:
        if (match := progress.search(line)) or epoch_end.search(line):
            at = datetime.datetime.strptime(line[6:21], "%H:%M:%S.%f")  # absl's 'I1207 03:02:26.679812'
            if match:
                assert last is None or (at - last).total_seconds() >= 2.0, line
                ended = [e for e, _ in seen if e == "end"]
                seen.append((int(match[1]), int(match[2])))
                assert int(match[1]) == len(ended) + 1  # within its epoch, before the epoch's line
            else:
                seen.append(("end", None))
            last = at
    steps = [step for epoch, step in seen if epoch != "end"]
    assert steps and any(step < 50 for step in steps), lines
