"""Run the README's command 1 (the quick ensemble) once, timed, and keep what it printed.

    python experiments/quickstart.py                 # trains runs/quickstart, writes the JSON
    python experiments/quickstart.py --readme        # the README's quick-start block, from the JSON

The README shows the output and the time of its first command as this script last measured them
(`experiments/results/quickstart.json`: the command, its wall time from start to exit, what it
printed, the machine and the date), so the figure there is a measurement, regenerated, never
typed by hand; `tests/test_readme.py` checks the README holds the block the JSON gives.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mnist_jax import metrics  # noqa: E402  (the repo on the path first, for a plain checkout)
from mnist_jax.atomic import write_json  # noqa: E402
from mnist_jax.platform import cpu_model  # noqa: E402

RESULTS = REPO / "experiments" / "results" / "quickstart.json"
COMMAND = ["python", "-m", "mnist_jax.main", "--config=configs/quick.py"]


def measure(workdir: Path) -> dict[str, Any]:
    """Train the quick config from scratch in `workdir` as its own process, timed end to end
    (start-up, data, compilation, training, the test evaluation and the pictures)."""
    shutil.rmtree(workdir, ignore_errors=True)  # from scratch: a resumed run would not be command 1
    command = [sys.executable, *COMMAND[1:], f"--workdir={workdir}"]
    start = time.perf_counter()
    # As a first run: nothing compiled by an earlier one (main keeps its programs on disk).
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "MNIST_JAX_COMPILATION_CACHE": "0"})
    wall_time_s = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"quickstart: the quick run failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return {"command": " ".join([*COMMAND, "--workdir=runs/quick"]),
            "wall_time_s": wall_time_s,
            "output": done.stdout.replace(str(workdir), "runs/quick").strip().splitlines(),
            "machine": f"{cpu_model()}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores",
            "date": time.strftime("%Y-%m-%d")}


def readme_block(result: dict[str, Any]) -> str:
    """What the README shows under command 1: the output, then when, where and how long."""
    return "\n".join(["```text", *result["output"], "```", "",
                      f"Measured by `python experiments/quickstart.py` on {result['date']}: "
                      f"{metrics.truncated(result['wall_time_s'], 1)} s from start to exit on {result['machine']} "
                      f"(data loading, compilation and the test evaluation included)."])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/quickstart", help="the run folder (emptied first)")
    parser.add_argument("--results", default=str(RESULTS), help="the JSON to write or read")
    parser.add_argument("--readme", action="store_true", help="print the README's block from --results")
    args = parser.parse_args(argv)
    results = Path(args.results)
    if args.readme:
        if not results.exists():
            parser.error(f"{results} does not exist yet: run `python experiments/quickstart.py` first")
        print(readme_block(json.loads(results.read_text())))
        return
    result = measure(Path(args.workdir).resolve())
    write_json(results, result)
    print(readme_block(result))


if __name__ == "__main__":
    main()
