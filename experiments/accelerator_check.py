"""The first command to run on a GPU or TPU: devices, exact resume, lowering, throughput and layouts,
in one JSON, within a time budget.

    python experiments/accelerator_check.py                      # ~8 minutes; full on a GPU/TPU, small on a CPU
    python experiments/accelerator_check.py --minutes=2 --out runs/accelerator_check
    python experiments/accelerator_check.py --lower-for=cuda,tpu --members=1,8,64 --minutes=30
    python experiments/accelerator_check.py --reproduce=deotte15:members=4:epochs=10 --budget-minutes=60 --minutes=80

Time: `--minutes N` (default 8) bounds the whole check, the reference row included. The parts
in processes of their own (1, 2) may use all but 40 % of N, which the in-process ones (3-6) keep;
each such process is stopped at its share. The in-process parts plan from what they measured:
before each compiled program the check estimates its compile and timed steps from the nearest one
it measured (same model, then strategy, dtype, K and member count; the step time scaled by members
and FLOPs per image, an unrolled compile by members) and runs it only if it fits the time left.
What did not fit is listed, with why, in the JSON's "plan" and printed at the end.

Compiled programs are kept: every process of the check (the resume check's runs, the reference
row, its own timings) uses one persistent compilation cache, OUT/jax_cache, keeping every program
(no minimum compile time). So the straight and the resumed runs run the same compiled programs
(on a GPU, the same autotuned kernels), and the resume comparison tells whether resuming is exact,
not whether two compilations chose alike; a second check with the same OUT compiles less (its
setup times are then cache loads: delete OUT/jax_cache for cold ones).

What it checks (the JSON is rewritten after each part, so a stopped check keeps what it measured):

1. Resume: the quick config through the real command line, once uninterrupted and once SIGTERMed
   as soon as its first epoch is logged and then re-run with the same command; the two runs'
   test and validation probabilities are compared (bitwise on the CPU). When they differ, the
   uninterrupted run is repeated: if it too differs from itself, the device is not deterministic
   run to run and bitwise equality cannot be asked of a resume there.
2. Optionally (`--reproduce=NAME[:members=M][:epochs=E] --budget-minutes=X`) a reference row with
   experiments/reproduce.py, stopped by SIGTERM at its budget or at what `--minutes` leaves it:
   the state is saved, and running the same check (or reproduce.py command) again resumes it, so
   a cut run is not lost.
3. Devices: `jax.devices()` (kind, count, processes, memory where the device reports it), the
   versions, XLA:CPU's setup, the convolution backend, and whether float32 matmuls and convolutions
   run in TF32 (JAX's default precision does on NVIDIA Ampere and newer).
4. Lowering (`--lower-for=cuda,tpu`, the default in full mode): the custom-call targets of the
   quick and deotte15 train steps lowered for each platform; a oneDNN target (`mnist_onednn_*`,
   native CPU code) in a GPU/TPU program is a failure.
5. Throughput of the real train step (`bench_throughput.jax_timer`; random uint8 images of
   MNIST's shape, batch 128, Adam, no augmentation) per model, dtype (float32; bfloat16 compute
   with float32 parameters), member strategy (`vmap`, `unroll`), member count and steps per
   compiled call K; the strategies and K values of one model, dtype and member count are timed
   alternately, median of the repeats. Member counts go in the order that covers their range
   soonest (1, 64, 8, 2, ...). Share of peak = FLOPs per training image x images/s / (the FLOP/s
   of a large matmul in the same dtype, measured here, x the devices the members use; on the CPU
   the whole machine's, its devices share the cores); FLOPs per training image are 3 x XLA's
   count of one forward pass (backward ~ 2 x forward, `engine.member_cost`), so the share is an
   estimate. PyTorch's one-member step (`torch_peer.py`) is timed alternately with JAX's where a
   CUDA PyTorch is importable on a GPU (on the CPU only with `--torch`). Full mode would compile 6
   programs for each of 2 models x 2 dtypes x 7 member counts: `--minutes` decides how many run,
   `--models`, `--members` and `--steps-per-call` narrow it.
6. Layouts: for each model and member count timed (float32, the engine's strategy, K = 1), the
   two layouts the engine chooses between, timed alternately: the members alone over the devices,
   and members x data (of `engine.layouts`, the cheapest by `engine.layout_cost`); which was
   faster, and what `engine.mesh_shape` picks here by its cost rule (never a data axis on the
   CPU: `engine.data_parallel_default`) and by this measurement. On one device they are the same
   layout, and the check says so.

Parts 1 and 2 run in processes of their own and come first: this process starts JAX's backend only
after them (on a TPU one process at a time holds the chips; on a GPU JAX takes 75 % of the memory).

Small mode (the default on a CPU: tiny20k, 1-2 members, K 1-2, a 2,048-image resume run). Writes
OUT/accelerator_check.json and OUT/accelerator_check.md, prints the table and a summary, and exits
1 when a check failed (the JSON's "failures"; a part skipped for time is not a failure). Downloads
nothing: MNIST must be on the machine ($MNIST_JAX_DATA_DIR, or `python -m mnist_jax.data fetch mnist`
beforehand); without it the resume check is skipped and says why.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STARTED = time.monotonic()  # --minutes counts from here, JAX's import included
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402  (the repo on the path first, for a plain checkout)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import bench_throughput as bench  # noqa: E402  (next to this script)
from mnist_jax import config as config_lib, engine, lowering, metrics, models, platform, runfolder  # noqa: E402
from mnist_jax.atomic import write_bytes, write_json  # noqa: E402
from mnist_jax.data import idx, mnist  # noqa: E402

BATCH = 128
DTYPES = ("float32", "bfloat16")
LOWERED_CONFIGS = ("quick", "deotte15")
ONEDNN_PREFIX = "mnist_onednn_"
SIGNAL_STEP = re.compile(r"stopped by signal 15 at step (\d+)")
RUN_TIMEOUT_S = 1800  # one resume-check run; a hung run must not hang the check
RESUME_RUNS = ("straight", "resumed", "straight_again")  # the resume check's run folders
GRACE_S = 300  # at most, for reproduce.py to save its state after the budget's SIGTERM
GRACE_SHARE = 0.1  # of reproduce.py's time, at most, for that
MIN_REPRODUCE_S = 60  # a reference row is not started with less time left
DEFAULT_MINUTES = 8.0  # fits a first look at one GPU (module docstring)
IN_PROCESS_SHARE = 0.4  # of --minutes, kept from the parts in processes of their own
REPORT_S = 5.0  # kept back for writing the report
CACHE = "jax_cache"  # the persistent compilation cache, under --out


@dataclasses.dataclass(frozen=True)
class Mode:
    """What a mode measures (MODES)."""
    name: str
    models: tuple[str, ...]
    members: tuple[int, ...]
    steps_per_call: tuple[int, ...]
    steps: int  # per timed repeat (rounded up to a multiple of every K)
    repeats: int
    warmup: int  # untimed calls after the compiling one
    matmul_n: int
    matmul_calls: int  # per timed repeat
    resume_overrides: tuple[str, ...]  # of configs/quick.py
    lower_for: tuple[str, ...]


MODES = {
    "small": Mode(
        "small", models=("tiny20k",), members=(1, 2), steps_per_call=(1, 2), steps=8, repeats=3,
        warmup=1, matmul_n=1024, matmul_calls=10,
        resume_overrides=("--config.num_members=2", "--config.train_subset=2048",
                          "--config.validation_size=500", "--config.log_every_steps=1"),
        lower_for=()),
    "full": Mode(
        "full", models=("tiny20k", "deotte"), members=(1, 2, 4, 8, 16, 32, 64),
        steps_per_call=(1, 4, 16), steps=48, repeats=5, warmup=2, matmul_n=4096, matmul_calls=50,
        # Two epochs: the signal goes out once the first is logged, and a one-epoch run would
        # have finished by then, leaving nothing to interrupt.
        resume_overrides=("--config.num_epochs=2", "--config.log_every_steps=10"),
        lower_for=("cuda", "tpu")),
}


# ------------------------------------------------------------------------------------- time


class Budget:
    """The check's time (`--minutes`): what is left, and what was skipped for want of it."""

    def __init__(self, minutes: float, started: float) -> None:
        self.minutes = minutes
        self.deadline = started + 60 * minutes - REPORT_S
        self.skipped: list[dict[str, str]] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def fits(self, part: str, estimate_s: float, keep_s: float = 0.0) -> bool:
        """Whether `part`, estimated at `estimate_s`, fits the time left less `keep_s` (kept for
        later parts); when it does not, it is skipped and listed."""
        left = self.left() - keep_s
        if estimate_s <= left:
            return True
        self.skip(part, f"needs ~{estimate_s:.0f} s, {max(0.0, left):.0f} s left")
        return False

    def skip(self, part: str, why: str) -> None:
        self.skipped.append({"part": part, "why": why})
        print(f"skipped {part}: {why}", file=sys.stderr, flush=True)


class Timings:
    """The compiled programs measured so far, to estimate the next ones (module docstring, Time)."""

    def __init__(self) -> None:
        self.measured: list[dict[str, Any]] = []

    def add(self, **program: Any) -> None:
        """model, dtype, strategy, k, members, flops (per image), setup_s, repeat_s."""
        self.measured.append(program)

    def estimate(self, model: str, dtype: str, strategy: str, k: int, members: int, flops: float,
                 repeats: int) -> float:
        """Seconds to set up a program and time it `repeats` + 1 times; 0 before any measurement
        (the first program runs whatever is left)."""
        if not self.measured:
            return 0.0
        near = min(self.measured, key=lambda p: (p["model"] != model, p["strategy"] != strategy,
                                                 p["dtype"] != dtype, p["k"] != k,
                                                 abs(math.log(members / p["members"]))))
        scale = members / near["members"]
        setup = near["setup_s"] * (scale if strategy == "unroll" else 1.0)
        return setup + (repeats + 1) * near["repeat_s"] * scale * flops / near["flops"]


def compilation_cache(folder: Path) -> dict[str, str]:
    """Keep every program this process compiles in `folder`; returns the environment that has
    the check's subprocesses do the same."""
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(folder),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def spread(values: Sequence[int]) -> list[int]:
    """`values` in the order that covers their range soonest: 1, 2, 4, ..., 64 -> 1, 64, 8, 2, 16, 4, 32."""
    order = list(dict.fromkeys([values[0], values[-1]]))
    gaps = [(0, len(values) - 1)]
    while gaps:
        lo, hi = gaps.pop(0)
        if hi - lo > 1:
            mid = (lo + hi) // 2
            order.append(values[mid])
            gaps += [(lo, mid), (mid, hi)]
    return order


# ----------------------------------------------------------------------------------- devices


def _memory(device: jax.Device) -> dict[str, int] | None:
    """The device's memory limit and use in bytes, where it reports them (GPU/TPU, not the CPU)."""
    try:
        stats = device.memory_stats()
    except (NotImplementedError, RuntimeError):
        return None
    keys = ("bytes_limit", "bytes_in_use", "peak_bytes_in_use")
    return {k: int(stats[k]) for k in keys if k in stats} if stats else None


def tf32_record(device: jax.Device) -> dict[str, Any]:
    """Whether float32 matmuls and convolutions run in TF32: on NVIDIA GPUs of compute capability
    8.0 and newer at JAX's default precision (unset, 'default', 'high' or 'tensorfloat32')."""
    precision = jax.config.jax_default_matmul_precision
    capability = getattr(device, "compute_capability", None)
    nvidia = device.platform == "gpu" and "cuda" in str(
        getattr(getattr(device, "client", None), "platform_version", "")).lower()
    major = int(str(capability).split(".")[0]) if nvidia and capability else 0
    applies = nvidia and major >= 8 and precision in (None, "default", "high", "tensorfloat32",
                                                      "TF32_TF32_F32")
    return {"applies": applies, "matmul_precision": precision, "compute_capability": capability,
            "nvidia": nvidia}


def devices_record() -> dict[str, Any]:
    first = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "platform": first.platform,
        "device_kind": first.device_kind,
        "count": jax.device_count(),
        "local_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "devices": [{"id": d.id, "device_kind": d.device_kind, "memory": _memory(d)}
                    for d in jax.local_devices()],
        "description": platform.device_description(),
        "setup": platform.setup_record(),
        "cpu_model": platform.cpu_model(),
        "conv_backend": platform.conv_backend(),
        "jax": jax.__version__,
        "jaxlib": importlib.metadata.version("jaxlib"),
        "tf32": tf32_record(first),
    }


# ------------------------------------------------------------------------------------ resume


def local_mnist() -> Path | None:
    """The folder the training command will read MNIST from, if it is on this machine: the
    check downloads nothing, so without one the resume check is skipped."""
    env = os.environ.get("MNIST_JAX_DATA_DIR")
    for folder in ([Path(env)] if env else [mnist.cache_dir()]):
        if all(idx.find(folder, name) for name in mnist.MNIST_SHA256):
            return folder
    return None


def _first_epoch_logged(workdir: Path) -> bool:
    return bool(runfolder.read_metrics(workdir))


def _run(command: list[str], env: dict[str, str], timeout_s: float, *,
         stop_after_first_epoch: Path | None = None) -> dict[str, Any]:
    """Run `command` from the repo for at most `timeout_s` (then it is killed: "timed_out"); with
    `stop_after_first_epoch=WORKDIR`, SIGTERM it once its first epoch is in WORKDIR/metrics.jsonl
    (training is then under way)."""
    start = time.perf_counter()
    timeout_s = max(1.0, min(timeout_s, RUN_TIMEOUT_S))
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    signalled = timed_out = False
    try:
        if stop_after_first_epoch is not None:
            while proc.poll() is None and not _first_epoch_logged(stop_after_first_epoch):
                if time.perf_counter() - start > timeout_s:
                    break
                time.sleep(0.05)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                signalled = True
        _, err = proc.communicate(timeout=max(1.0, timeout_s - (time.perf_counter() - start)))
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        timed_out = True
    return {"returncode": proc.returncode, "wall_s": time.perf_counter() - start,
            "signalled": signalled, "timed_out": timed_out, "stderr": err}


def _compare(a: Path, b: Path) -> tuple[bool, float]:
    """Whether two runs' predictions.npz are bitwise equal ('probs', 'val_probs'), and the
    largest absolute difference between them."""
    x, y = runfolder.read_predictions(a, None), runfolder.read_predictions(b, None)
    pairs = [(x[k], y[k]) for k in ("probs", "val_probs")]
    bitwise = all(np.array_equal(p, q) for p, q in pairs)
    return bitwise, max(float(np.max(np.abs(p.astype(np.float64) - q))) for p, q in pairs)


def _tail(text: str, lines: int = 5) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def resume_check(workdir: Path, mode: Mode, budget: Budget, keep_s: float,
                 env: dict[str, str]) -> dict[str, Any]:
    """The quick config run straight, and interrupted + resumed (module docstring), each run
    within the time `budget` leaves above `keep_s`: the interrupted and resumed runs only if 1.5 x
    the straight run's time fits (they load its compiled programs from the cache)."""
    folder = local_mnist()
    if folder is None:
        return {"verdict": "skipped", "reason": "MNIST is not on this machine: set MNIST_JAX_DATA_DIR "
                "or run `python -m mnist_jax.data fetch mnist` first (this check downloads nothing)"}

    for name in RESUME_RUNS:  # a previous check's runs would be resumed, not trained
        shutil.rmtree(workdir / name, ignore_errors=True)

    def command(name: str) -> list[str]:
        return [sys.executable, "-m", "mnist_jax.main", f"--config={REPO / 'configs' / 'quick.py'}",
                f"--workdir={workdir / name}", *mode.resume_overrides]

    def run(name: str, **kwargs: Any) -> dict[str, Any]:
        return _run(command(name), env, budget.left() - keep_s, **kwargs)

    def out_of_time() -> dict[str, Any]:  # after budget.skip, or a budget.fits that failed
        return {**record, "verdict": "skipped", "reason": f"out of time: {budget.skipped[-1]['why']}"}

    record: dict[str, Any] = {"command": shlex.join(["python", *command("RUN")[1:]]), "data": str(folder)}
    runs = {"straight": run("straight")}
    if runs["straight"]["timed_out"]:
        budget.skip("resume check", f"the uninterrupted run did not end in the "
                                    f"{runs['straight']['wall_s']:.0f} s left to it")
        return out_of_time()
    if not budget.fits("resume check: the interrupted and resumed runs", 1.5 * runs["straight"]["wall_s"],
                       keep_s):
        return out_of_time()
    runs["interrupted"] = run("resumed", stop_after_first_epoch=workdir / "resumed")
    stopped = SIGNAL_STEP.search(runs["interrupted"]["stderr"])
    record["interrupted"] = runs["interrupted"]["returncode"] == 130 and stopped is not None
    record["stopped_at_step"] = int(stopped[1]) if stopped else None
    runs["resumed"] = run("resumed")
    expected = {"straight": {0}, "interrupted": {0, 130}, "resumed": {0}}
    failed = {k: r for k, r in runs.items() if r["returncode"] not in expected[k]}
    record["runs"] = {k: {"returncode": r["returncode"], "wall_s": r["wall_s"], "signalled": r["signalled"],
                          "stderr_tail": _tail(r["stderr"])} for k, r in runs.items()}
    if runs["resumed"]["timed_out"]:
        budget.skip("resume check", "the resumed run did not end in the time left to it")
        return out_of_time()
    if failed:
        record["verdict"] = "fail"
        record["reason"] = "; ".join(f"the {k} run exited {r['returncode']}: {_tail(r['stderr'], 1)}"
                                     for k, r in failed.items())
        return record
    record["bitwise"], record["max_abs_diff"] = _compare(workdir / "straight", workdir / "resumed")
    if not record["interrupted"]:
        record["verdict"] = "not interrupted"
        record["reason"] = ("the run finished before the signal arrived (exit "
                            f"{runs['interrupted']['returncode']}), so no resume was checked")
    elif record["bitwise"]:
        record["verdict"] = "ok"
    else:  # a resume bug, or a device that differs from itself run to run?
        if not budget.fits("resume check: the repeated uninterrupted run", runs["straight"]["wall_s"], keep_s):
            record["verdict"] = "fail"
            record["reason"] = (f"resumed predictions differ from the uninterrupted run's by up to "
                                f"{record['max_abs_diff']:.3g}, and no time was left to repeat the "
                                "uninterrupted run (which tells a device that differs from itself)")
            return record
        again = run("straight_again")
        if again["returncode"]:
            record["verdict"] = "fail"
            record["reason"] = f"the repeated uninterrupted run exited {again['returncode']}"
            return record
        record["repeat_bitwise"], record["repeat_max_abs_diff"] = _compare(
            workdir / "straight", workdir / "straight_again")
        record["verdict"] = "fail" if record["repeat_bitwise"] else "nondeterministic"
    return record

# -------------------------------------------------------------------------------- throughput


def matmul_peak(n: int, dtype: str, calls: int, repeats: int) -> dict[str, Any]:
    """FLOP/s of an n x n matmul at JAX's default precision (TF32 where `tf32_record` says so),
    run on every local device at once; per device = all / devices. The fastest repeat: a peak."""
    devices = jax.local_devices()
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    pairs = [(jax.device_put(a, d), jax.device_put(a.T, d)) for d in devices]
    matmul = jax.jit(jnp.matmul)
    jax.block_until_ready([matmul(x, y) for x, y in pairs])  # compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):  # each device runs its calls in order: waiting for the last is enough
            last = [matmul(x, y) for x, y in pairs]
        jax.block_until_ready(last)
        times.append(time.perf_counter() - start)
    per_device = 2 * n ** 3 * calls / min(times)
    return {"n": n, "dtype": dtype, "calls": calls, "devices": len(devices),
            "flops_per_s_per_device": per_device, "flops_per_s": per_device * len(devices),
            "times_s": times}


def steps_per_repeat(mode_steps: int, steps_per_call: Sequence[int]) -> int:
    """`mode_steps` rounded up to a multiple of every K (each repeat is whole calls)."""
    lcm = math.lcm(*steps_per_call)
    return lcm * -(-mode_steps // lcm)


def peak_for(peak: dict[str, Any], members: int) -> float:
    """The matmul FLOP/s the members' devices offer: per device x the devices the member axis
    spans; on the CPU the whole machine's, since CPU devices share the cores and one member's
    oneDNN convolutions use all of them."""
    if jax.default_backend() == "cpu":
        return peak["flops_per_s"]
    return peak["flops_per_s_per_device"] * engine.mesh_shape(members, jax.device_count(),
                                                               data_parallel=False)[0]


def throughput(specs: Sequence[bench.Spec], members: Sequence[int], steps_per_call: Sequence[int],
               mode: Mode, peaks: dict[str, dict[str, Any]], flops: dict[str, float], budget: Budget,
               timings: Timings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows, one per (model, dtype, strategy, members, K) that fit the budget, and the layout
    comparisons (`compare_layouts`) of each float32 (model, members). The strategies and K values
    of one (model, dtype, members) are timed alternately, so machine noise hits the choices they
    compare alike; each is first set up (compiled, warmed up) and timed once, for the estimates. A
    group that fails (out of memory with 64 members on a small GPU) gets rows with its error, and
    the rest go on."""
    steps = steps_per_repeat(mode.steps, steps_per_call)
    default = engine.default_strategy()
    strategies = [default, *(s for s in bench.STRATEGIES if s != default)]
    rows, layouts = [], []
    for m in spread(members):
        for spec in specs:
            label = bench.spec_label(spec)
            for dtype in DTYPES:
                print(f"throughput {label} {dtype} M={m} ...", file=sys.stderr, flush=True)
                key = {"model": label, "dtype": dtype, "members": m, "batch": BATCH}
                timers, setup_s, pending = {}, {}, 0.0
                try:
                    for strategy, k in ((s, k) for s in strategies for k in steps_per_call):
                        estimate = timings.estimate(label, dtype, strategy, k, m, flops[label], mode.repeats)
                        if not budget.fits(f"throughput {label} {dtype} M={m} {strategy} K={k}",
                                           estimate + pending):
                            continue
                        setup_s[strategy, k] = None  # tried: an error row if it fails
                        start = time.perf_counter()
                        timer = bench.jax_timer(spec, batch=BATCH, members=m, steps=steps, warmup=mode.warmup,
                                                strategy=strategy, dtype=dtype, steps_per_call=k)
                        setup_s[strategy, k] = time.perf_counter() - start  # compile + warm-up
                        repeat_s = timer()
                        timings.add(model=label, dtype=dtype, strategy=strategy, k=k, members=m,
                                    flops=flops[label], setup_s=setup_s[strategy, k], repeat_s=repeat_s)
                        timers[strategy, k] = timer
                        pending += mode.repeats * repeat_s
                    times = bench.alternate(timers, mode.repeats)
                except jax.errors.JaxRuntimeError as e:
                    rows += [{**key, "strategy": strategy, "steps_per_call": k,
                              "error": str(e).splitlines()[0]} for strategy, k in setup_s]
                    continue
                finally:
                    timers.clear()  # their states, and the cached programs and buffers
                    bench._train_step.cache_clear()
                    bench._initial_state.cache_clear()
                peak = peaks.get(dtype)
                for (strategy, k), t in times.items():
                    ips = m * BATCH * steps / statistics.median(t)
                    rows.append({**key, "strategy": strategy, "steps_per_call": k, "steps": steps,
                                 "images_per_s": ips, "per_member_images_per_s": ips / m,
                                 "training_flops_per_image": flops[label],
                                 "share_of_peak": flops[label] * ips / peak_for(peak, m) if peak else None,
                                 "setup_s": setup_s[strategy, k], "times_s": t})
                if dtype == "float32" and times:
                    layouts.append(compare_layouts(spec, m, steps, mode, budget, timings, flops[label]))
    return rows, [r for r in layouts if r]


def compare_layouts(spec: bench.Spec, members: int, steps: int, mode: Mode, budget: Budget,
                    timings: Timings, flops: float) -> dict[str, Any] | None:
    """The two layouts the engine chooses between for `members` of `spec` (float32, the engine's
    strategy, K = 1), timed alternately: the members alone over the devices, and members x data
    (the cheapest by `engine.layout_cost`). None when it does not fit the budget."""
    devices, strategy = jax.device_count(), engine.default_strategy()
    label = bench.spec_label(spec)
    common = {"data_parallel": True, "batch_sizes": (BATCH,)}
    candidates = engine.layouts(members, devices, **common)
    record: dict[str, Any] = {"model": label, "members": members, "strategy": strategy,
                              "devices": devices, "members_only": {"layout": candidates[0]}}
    if len(candidates) == 1:
        record["same"] = (f"on {devices} device{'s' if devices > 1 else ''} members alone and members "
                          f"x data are the same layout, {candidates[0]}: nothing to compare")
        return record
    cost = engine.member_cost(models.get(spec[0], **spec[1]), bench.IMAGE_SHAPE)
    split = min(candidates[1:], key=lambda c: engine.layout_cost(c, members, BATCH, cost, strategy))
    estimate = 2 * timings.estimate(label, "float32", strategy, 1, members, flops, mode.repeats)
    if not budget.fits(f"layouts {label} M={members}: {candidates[0]} against {split}", estimate):
        return None
    print(f"layouts {label} M={members}: {candidates[0]} against {split} ...", file=sys.stderr, flush=True)
    try:
        timers = {layout: bench.jax_timer(spec, batch=BATCH, members=members, steps=steps,
                                          warmup=mode.warmup, strategy=strategy, layout=layout)
                  for layout in (candidates[0], split)}
        seconds = {layout: statistics.median(t) for layout, t in bench.alternate(timers, mode.repeats).items()}
    except jax.errors.JaxRuntimeError as e:
        return {**record, "members_x_data": {"layout": split}, "error": str(e).splitlines()[0]}
    finally:
        bench._train_step.cache_clear()
        bench._initial_state.cache_clear()
    ips = {layout: members * BATCH * steps / s for layout, s in seconds.items()}
    return {**record, "members_only": {"layout": candidates[0], "images_per_s": ips[candidates[0]]},
            "members_x_data": {"layout": split, "images_per_s": ips[split]},
            "faster": "members alone" if seconds[candidates[0]] <= seconds[split] else "members x data",
            "rule_chooses": engine.mesh_shape(members, devices, data_parallel=engine.data_parallel_default(),
                                              batch_sizes=(BATCH,), strategy=strategy, member_cost=cost),
            "measurement_chooses": engine.mesh_shape(members, devices, **common, costs=seconds)}


def torch_device(backend: str, small: bool, asked: bool) -> tuple[str | None, str]:
    """(PyTorch's device for the comparison, or None, and why not)."""
    if backend == "cpu" and small and not asked:
        return None, "not measured: small mode on the CPU (pass --torch)"
    if backend == "tpu":
        return None, "not measured: no PyTorch peer runs on a TPU here"
    try:
        import torch
    except ImportError:
        return None, "not measured: PyTorch is not importable (pip install -e '.[bench]')"
    if backend == "cpu":
        return "cpu", ""
    if not torch.cuda.is_available():
        return None, f"not measured: PyTorch {torch.__version__} sees no CUDA device"
    return "cuda", ""


def torch_comparison(specs: Sequence[bench.Spec], device: str, mode: Mode) -> dict[str, Any]:
    """bench_throughput's comparison (one member, JAX's default strategy, K = 1) with PyTorch on
    `device`; on CUDA both sides use TF32 for float32 (JAX's default; PyTorch's matmul set to it,
    its cuDNN convolutions use it by default) and autotuned convolutions (cudnn.benchmark)."""
    import torch
    import torch_peer
    settings: dict[str, Any] = {"torch": torch.__version__, "device": device}
    if device == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.benchmark = True
        settings.update(float32_matmul_precision=torch.get_float32_matmul_precision(),
                        cudnn_allow_tf32=torch.backends.cudnn.allow_tf32, cudnn_benchmark=True)
    else:
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        settings["threads"] = torch.get_num_threads()
    specs = [s for s in specs if s[0] in torch_peer.names()]
    rows = []
    for dtype in DTYPES:
        args = argparse.Namespace(steps=mode.steps, warmup=mode.warmup, dtype=dtype, repeats=mode.repeats,
                                  strategy=engine.default_strategy(), no_torch=False)
        rows += [{**r, "dtype": dtype} for r in bench.compare(specs, [BATCH], args, torch_device=device)]
    bench._train_step.cache_clear()
    bench._initial_state.cache_clear()
    return {"settings": settings, "rows": rows}


# --------------------------------------------------------------------------------- lowering


def lowered(platforms: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per platform: the custom-call targets of the quick and deotte15 train steps lowered for it
    (2 members, the strategy that platform would pick: the calls do not depend on the count)."""
    record = {}
    for target in platforms:
        by_config = {}
        for name in LOWERED_CONFIGS:
            config = config_lib.from_file(REPO / "configs" / f"{name}.py")
            config.num_members = 2
            config.member_strategy = "unroll" if target == "cpu" else "vmap"
            by_config[name] = lowering.custom_calls(lowering.train_step_text(config, target))
        calls = sorted(set().union(*by_config.values()))
        record[target] = {"custom_calls": calls, "by_config": by_config,
                          "onednn": [c for c in calls if c.startswith(ONEDNN_PREFIX)]}
    return record


# -------------------------------------------------------------------------------- reproduce


def reproduce(spec: dict[str, Any], seconds: float, env: dict[str, str]) -> dict[str, Any]:
    """experiments/reproduce.py for `spec` (config, members, epochs) for at most `seconds`: SIGTERMed
    a grace period before (so it saves its state, and the same command resumes it), killed at it."""
    script = "experiments/reproduce.py"  # run from the repo, so its run folders and results are the repo's
    command = [sys.executable, script, f"--config={spec['config']}"]
    command += [f"--{k}={spec[k]}" for k in ("members", "epochs") if spec.get(k) is not None]
    grace = min(GRACE_S, GRACE_SHARE * seconds)
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    cut = False
    try:
        out, err = proc.communicate(timeout=seconds - grace)
    except subprocess.TimeoutExpired:
        cut = True
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    return {"command": shlex.join(["python", *command[1:]]), "limit_s": seconds,
            "cut_at_budget": cut, "returncode": proc.returncode, "wall_s": time.perf_counter() - start,
            "row": rows[-1] if len(rows) > 1 else None, "stderr_tail": _tail(err)}

# ---------------------------------------------------------------------------------- reports


def _num(value: float | None, places: int = 0) -> str:
    return "-" if value is None else metrics.truncated(value, places)


def markdown(results: dict[str, Any]) -> str:
    """The report: devices, resume, the throughput table (one row per model, dtype, strategy,
    members, K), PyTorch, lowering. Figures truncated, never rounded up."""
    meta, d = results["meta"], results.get("devices")
    machine = (f"{d['description']}; jax {d['jax']}, convolutions on {d['conv_backend']}, TF32 for "
               f"float32: {'yes' if d['tf32']['applies'] else 'no'}" if d
               else f"{meta['expected_platform']} (devices not read yet)")
    lines = ["# Accelerator check", "", f"{meta['date']}, {meta['mode']} mode: {machine}.", "",
             f"Resume: {resume_line(results.get('resume'))}", ""]
    peaks = results.get("peak")
    if peaks:
        lines += ["Peak: " + "; ".join(
            f"{p['n']}x{p['n']} {dtype} matmul {_num(p['flops_per_s_per_device'] / 1e9)} GFLOP/s per "
            f"device ({_num(p['flops_per_s'] / 1e9)} on all {p['devices']})"
            for dtype, p in peaks.items()), ""]
    lines += ["| model | dtype | strategy | members | steps/call | total img/s | per-member img/s "
              "| share of peak |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results.get("throughput", []):
        share = r.get("share_of_peak")
        cells = ((_num(r["images_per_s"]), _num(r["per_member_images_per_s"]),
                  "-" if share is None else f"{_num(100 * share, 2)} %") if "error" not in r
                 else (f"error: {r['error'][:60]}", "-", "-"))
        lines.append(f"| {r['model']} | {r['dtype']} | {r['strategy']} | {r['members']} | "
                     f"{r['steps_per_call']} | {' | '.join(cells)} |")
    layouts = results.get("layouts")
    if layouts:
        lines += ["", "| model | members | members alone | img/s | members x data | img/s | faster "
                      "| rule picks | measurement picks |", "| --- | ---: | --- | ---: | --- | ---: | --- | --- | --- |"]
        for r in layouts:
            alone, split = r["members_only"], r.get("members_x_data", {})
            if "same" in r or "error" in r:
                lines.append(f"| {r['model']} | {r['members']} | {_layout(alone['layout'])} | - | "
                             f"{_layout(split.get('layout'))} | - | {r.get('same') or 'error: ' + r['error'][:60]} | - | - |")
                continue
            lines.append(f"| {r['model']} | {r['members']} | {_layout(alone['layout'])} | "
                         f"{_num(alone['images_per_s'])} | {_layout(split['layout'])} | "
                         f"{_num(split['images_per_s'])} | {r['faster']} | {_layout(r['rule_chooses'])} | "
                         f"{_layout(r['measurement_chooses'])} |")
    torch = results.get("torch")
    if isinstance(torch, dict):
        lines += ["", f"PyTorch {torch['settings']['torch']} on {torch['settings']['device']}, one member:",
                  "", "| model | dtype | JAX img/s | PyTorch img/s | JAX / PyTorch |",
                  "| --- | --- | ---: | ---: | ---: |"]
        lines += [f"| {r['model']} | {r['dtype']} | {_num(r['jax_images_per_s'])} | "
                  f"{_num(r['torch_images_per_s'])} | {_num(r['ratio_jax_over_torch'], 2)} |"
                  for r in torch["rows"]]
    elif torch:
        lines += ["", f"PyTorch: {torch}"]
    if results.get("lowered"):
        lines += ["", "| lowered for | custom calls of the quick + deotte15 train steps | oneDNN |",
                  "| --- | --- | --- |"]
        lines += [f"| {p} | {', '.join(r['custom_calls']) or '(none)'} | "
                  f"{'FAIL: ' + ', '.join(r['onednn']) if r['onednn'] else 'none'} |"
                  for p, r in results["lowered"].items()]
    if results.get("reproduce"):
        r = results["reproduce"]
        lines += ["", f"Reproduce (`{r['command']}`, exit {r['returncode']}"
                      f"{', cut at the budget: re-run to resume' if r['cut_at_budget'] else ''}): "
                      f"{r['row'] or 'no row'}"]
    plan = results.get("plan")
    if plan:
        lines += ["", f"Time: {_num(plan['minutes'], 1)} minutes; skipped for want of it: "
                      + ("; ".join(f"{s['part']} ({s['why']})" for s in plan["skipped"]) or "nothing")]
    return "\n".join(lines) + "\n"


def _layout(layout: Sequence[int] | None) -> str:
    return "-" if layout is None else f"({layout[0]}, {layout[1]})"


def resume_line(resume: dict[str, Any] | None) -> str:
    if resume is None:
        return "not run"
    verdict = resume["verdict"]
    if verdict == "skipped":
        return f"SKIPPED ({resume['reason']})"
    if verdict in ("ok", "nondeterministic"):
        stopped = f"stopped at step {resume['stopped_at_step']}, resumed"
        if verdict == "ok":
            return f"OK ({stopped}; predictions bitwise equal to the uninterrupted run's)"
        return (f"NOT CHECKABLE BITWISE ({stopped}; max |diff| {resume['max_abs_diff']:.3g}, but two "
                f"uninterrupted runs differ too: {resume['repeat_max_abs_diff']:.3g})")
    reason = resume.get("reason") or (f"resumed predictions differ from the uninterrupted run's by up "
                                      f"to {resume['max_abs_diff']:.3g}, which repeats bitwise")
    return f"FAIL ({reason})"


def failures(results: dict[str, Any]) -> list[str]:
    found = []
    resume = results.get("resume")
    if resume and resume["verdict"] in ("fail", "not interrupted"):
        found.append(f"resume: {resume_line(resume)}")
    found += [f"throughput {r['model']} {r['dtype']} {r['strategy']} M={r['members']} "
              f"K={r['steps_per_call']}: {r['error']}" for r in results.get("throughput", []) if "error" in r]
    found += [f"lowered for {p}: oneDNN custom calls {r['onednn']}"
              for p, r in (results.get("lowered") or {}).items() if r["onednn"]]
    found += [f"layouts {r['model']} M={r['members']}: {r['error']}"
              for r in results.get("layouts", []) if "error" in r]
    r = results.get("reproduce")
    if r and r["returncode"] and not r["cut_at_budget"]:
        found.append(f"reproduce: exit {r['returncode']}: {_tail(r['stderr_tail'], 1)}")
    return found


def save(out: Path, results: dict[str, Any]) -> None:
    results["failures"] = failures(results)
    write_json(out / "accelerator_check.json", results)
    write_bytes(out / "accelerator_check.md", markdown(results).encode())


# ------------------------------------------------------------------------------ command line


def _reproduce_spec(text: str) -> dict[str, Any]:
    """'deotte15:members=4:epochs=10' -> {'config': 'deotte15', 'members': 4, 'epochs': 10}."""
    import reproduce as reproduce_lib
    name, *fields = text.split(":")
    if name not in reproduce_lib.SYSTEMS:
        raise argparse.ArgumentTypeError(f"unknown reference config {name!r}; choose from "
                                         f"{', '.join(reproduce_lib.SYSTEMS)}")
    spec: dict[str, Any] = {"config": name}
    for field in fields:
        key, _, value = field.partition("=")
        if key not in ("members", "epochs") or not value.isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"bad --reproduce field {field!r}: write "
                                             f"NAME[:members=M][:epochs=E] with M, E >= 1")
        spec[key] = int(value)
    return spec


def _platforms(text: str) -> list[str]:
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in lowering.PLATFORMS]
    if unknown:
        raise argparse.ArgumentTypeError(f"cannot lower for {unknown}; choose from "
                                         f"{', '.join(lowering.PLATFORMS)}")
    return chosen


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/accelerator_check",
                   help="folder for the JSON, the table and the resume check's runs")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="the CPU mode (default on a CPU)")
    size.add_argument("--full", action="store_true", help="the accelerator mode (default off the CPU)")
    p.add_argument("--models", type=bench._specs,
                   help="throughput models, name[:field=int] (default: small tiny20k; full tiny20k,deotte)")
    p.add_argument("--members", type=bench._ints, help="member counts (default: small 1,2; full 1,2,...,64)")
    p.add_argument("--steps-per-call", type=bench._ints,
                   help="train steps per compiled call (default: small 1,2; full 1,4,16)")
    p.add_argument("--torch", action="store_true", help="time PyTorch on the CPU in small mode too")
    p.add_argument("--lower-for", type=_platforms,
                   help="platforms to lower the train steps for, e.g. cuda,tpu (default: full "
                        "cuda,tpu; small none; '' for none)")
    p.add_argument("--reproduce", type=_reproduce_spec, metavar="NAME[:members=M][:epochs=E]",
                   help="also grow a reference row with experiments/reproduce.py (recorded in "
                        "experiments/results/reproduction.json once it finishes)")
    p.add_argument("--budget-minutes", type=float,
                   help="--reproduce's time limit (within --minutes: cut to what the check leaves it)")
    p.add_argument("--minutes", type=float, default=DEFAULT_MINUTES,
                   help=f"the whole check's time, --budget-minutes included (default {DEFAULT_MINUTES:g}): "
                        "what does not fit is skipped and listed")
    p.add_argument("--skip-resume", action="store_true", help="skip the resume check")
    args = p.parse_args(argv)
    on_cpu = platform.expected_platform() == "cpu"  # told without starting JAX's backend
    args.mode = MODES["small" if args.small or (not args.full and on_cpu) else "full"]
    if args.minutes <= 0:
        p.error("--minutes must be > 0")
    if args.reproduce and (args.budget_minutes is None or args.budget_minutes <= 0):
        p.error("--reproduce needs --budget-minutes > 0")
    if args.budget_minutes is not None and not args.reproduce:
        p.error("--budget-minutes is --reproduce's limit: pass --reproduce=NAME too")
    ks = args.steps_per_call or args.mode.steps_per_call
    if steps_per_repeat(args.mode.steps, ks) * BATCH > bench.TRAIN_SIZE:
        p.error(f"--steps-per-call {ks}: a timed repeat of whole calls would exceed the "
                f"{bench.TRAIN_SIZE} images of one epoch; use smaller values")
    if args.torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            p.error("--torch: PyTorch is not importable (pip install -e '.[bench]')")
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        probe = Path(args.out) / f".write_probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        p.error(f"--out {args.out}: cannot write there ({e.strerror or e})")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    platform.configure_cpu()
    args = parse_args(argv)
    mode, out = args.mode, Path(args.out)
    budget, timings = Budget(args.minutes, STARTED), Timings()
    env = compilation_cache(out / CACHE)
    results: dict[str, Any] = {"meta": {
        "date": time.strftime("%Y-%m-%d %H:%M"), "mode": mode.name,
        "command": shlex.join(["python", "experiments/accelerator_check.py",
                               *(sys.argv[1:] if argv is None else argv)]),
        "expected_platform": platform.expected_platform(), "batch": BATCH,
        "compilation_cache": str(out / CACHE), "load_average_before": os.getloadavg()},
        "plan": {"minutes": args.minutes, "skipped": budget.skipped}}
    # The parts in processes of their own come first: this process starts JAX's backend only
    # after them, since on a TPU one process at a time holds the chips, and on a GPU JAX takes
    # 75 % of the memory when it starts. They leave IN_PROCESS_SHARE of the budget to the rest.
    keep_s = IN_PROCESS_SHARE * 60 * args.minutes
    if not args.skip_resume:
        print("resume check ...", file=sys.stderr, flush=True)
        results["resume"] = resume_check(out / "runs", mode, budget, keep_s, env)
        save(out, results)
    if args.reproduce and budget.fits(f"reproduce {args.reproduce['config']}", MIN_REPRODUCE_S, keep_s):
        seconds = min(60 * args.budget_minutes, budget.left() - keep_s)
        print(f"reproduce {args.reproduce} ({seconds / 60:.1f} min) ...", file=sys.stderr, flush=True)
        results["reproduce"] = reproduce(args.reproduce, seconds, env)
        save(out, results)

    results["devices"] = devices_record()
    platforms = mode.lower_for if args.lower_for is None else args.lower_for
    last = 0.0  # each platform is estimated at the last one's time
    for target in platforms:
        if budget.fits(f"lowering for {target}", last):
            print(f"lowering for {target} ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            results.setdefault("lowered", {}).update(lowered([target]))
            last = time.perf_counter() - start
    results["peak"], last = {}, 0.0
    for dtype in DTYPES:
        if budget.fits(f"peak {dtype}", last):
            start = time.perf_counter()
            results["peak"][dtype] = matmul_peak(mode.matmul_n, dtype, mode.matmul_calls, mode.repeats)
            last = time.perf_counter() - start
    save(out, results)
    specs = args.models or [bench.parse_spec(m) for m in mode.models]
    flops = {bench.spec_label(s): engine.member_cost(models.get(s[0], **s[1]), bench.IMAGE_SHAPE).flops_per_image
             for s in specs}
    results["throughput"], results["layouts"] = throughput(
        specs, args.members or mode.members, args.steps_per_call or mode.steps_per_call, mode,
        results["peak"], flops, budget, timings)
    save(out, results)
    device, why_not = torch_device(jax.default_backend(), mode.name == "small", args.torch)
    # JAX's one-member step and PyTorch's two probes (channels-last or not), each like JAX's
    estimate = sum(3 * timings.estimate(label, dtype, engine.default_strategy(), 1, 1, flops[label], mode.repeats)
                   for label in flops for dtype in DTYPES)
    if device and budget.fits("PyTorch comparison", estimate):
        try:
            results["torch"] = torch_comparison(specs, device, mode)
        except RuntimeError as e:  # e.g. a PyTorch CUDA build that does not fit the driver
            results["torch"] = f"not measured: {type(e).__name__}: {str(e).splitlines()[0]}"
    else:
        results["torch"] = why_not or "not measured: out of time"
    results["meta"].update(wall_time_s=time.monotonic() - STARTED, load_average_after=os.getloadavg())
    save(out, results)

    print(markdown(results))
    d = results["devices"]
    print(f"devices: {d['count']} x {d['device_kind']} ({d['backend']}), {d['process_count']} process(es)")
    print(f"resume: {resume_line(results.get('resume'))}")
    for r in results["layouts"]:
        print(f"layouts {r['model']} M={r['members']}: " + (r.get("same") or r.get("error") or (
            f"{r['faster']} faster ({_layout(r['members_only']['layout'])} "
            f"{_num(r['members_only']['images_per_s'])} img/s, {_layout(r['members_x_data']['layout'])} "
            f"{_num(r['members_x_data']['images_per_s'])}); the engine's rule picks "
            f"{_layout(r['rule_chooses'])}")))
    for s in budget.skipped:
        print(f"skipped (time): {s['part']}: {s['why']}")
    print(f"skipped (time): {len(budget.skipped)} part(s) of a {_num(args.minutes, 1)}-minute budget")
    for line in results["failures"]:
        print(f"FAILED: {line}")
    if not results["failures"]:
        print("no failures")
    print(f"wrote {out / 'accelerator_check.json'} and {out / 'accelerator_check.md'} "
          f"in {results['meta']['wall_time_s']:.0f} s")
    return results

if __name__ == "__main__":
    sys.exit(1 if main()["failures"] else 0)
