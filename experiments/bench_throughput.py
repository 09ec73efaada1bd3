"""Training throughput: the JAX ensemble engine against PyTorch, member scaling, input-pipeline cost.

Three measurements, all Adam (lr 1e-3, eps 1e-7, no weight decay), one process, in float32 or with
`--dtype bfloat16` in bfloat16 compute (the models' `dtype`, as `compute_dtype="bfloat16"` trains;
PyTorch under `torch.autocast("cpu", dtype=torch.bfloat16)`); parameters stay float32 on both sides:

1. Model comparison (one member; `--models` specs are name[:field=int], e.g. senet:filters=32).
   JAX runs the real `engine.make_train_step` (strategy from `--strategy`, default
   `engine.default_strategy()`) on the on-device uint8 dataset, gathering the batch inside the
   step, no augmentation. PyTorch runs the twin from `torch_peer.py` (parameter counts checked
   equal), fused Adam, `torch.set_num_threads(2)` (`--torch-threads`), the batch gathered from a
   uint8 tensor through a random permutation and cast / 255 inside the timed step; channels-last
   is used where one probe repeat measured it faster. After warm-up (compilation excluded) the
   two sides are timed ALTERNATELY, repeat by repeat, so machine noise hits both; each side reports
   images/s = batch * steps / (median repeat time), and ratio = JAX images/s / PyTorch images/s.
2. Member scaling (JAX only). At M members, total images/s = M * batch * steps / time and
   per-member images/s = total / M. Efficiency = total images/s at M / images/s at M = 1:
   1.0 means M members cost exactly M times one member per step (no gain from batching them into
   one program), M means they are free. The M values are timed round-robin.
3. Input share (JAX only). A jitted function doing only the batch gather + cast (and then the
   model's augmentation: tiny20k rotation 10 + shift 0.1, resnet_committee elastic 34/4 +
   rotation 10 + crop 25) is timed against the full train step with the same augmentation (and
   the plain gather against the plain step). The standalone function pays its own dispatch and
   writes its output to memory, so its share is an upper bound on the in-step cost.

Images are random uint8 of MNIST's shape (60,000 x 28 x 28): no step depends on pixel values.
Times use `time.perf_counter` around `steps` steps, closed by `jax.block_until_ready` (PyTorch on
the CPU is synchronous). The JSON keeps every repeat's time and the load average before and after:
on a shared machine the numbers mean little, so run it when the machine is otherwise idle.

    python experiments/bench_throughput.py --out bench.json
    python experiments/bench_throughput.py --models tiny20k,senet:filters=32 --batches 32 \
        --members 1,4 --repeats 3 --steps 10 --no-torch --out /tmp/quick.json
    python experiments/bench_throughput.py --table bench.json   # its tables again

The tables truncate (a ratio of 0.998 prints as 0.99, never 1.00); the JSON keeps the exact values.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mnist_jax import augment, engine, metrics, models, optim
from mnist_jax.platform import configure_cpu, conv_backend, cpu_model, malloc_mode

DEFAULT_MODELS = ("tiny20k", "deotte", "senet", "senet:filters=32", "resnet_committee",
                  "resnet_committee:width=32")
STRATEGIES = ("unroll", "vmap")
TRAIN_SIZE, IMAGE_SHAPE = 60_000, (28, 28, 1)
LEARNING_RATE, ADAM_EPS = 1e-3, 1e-7  # optim.default_config()'s Adam, on both sides.
# The recipes' augmentations (configs/tiny20k.py, configs/resnet_committee.py), by model name.
AUGMENTS = {
    "tiny20k": {"rotation": 10.0, "shift": 0.1},
    "resnet_committee": {"elastic_alpha": 34.0, "elastic_sigma": 4.0, "rotation": 10.0, "crop": 25},
}

Spec = tuple[str, dict[str, int]]
Timer = Callable[[], float]  # runs `steps` steps, returns their wall time in seconds.


class BenchError(ValueError):
    """A bad command-line choice; the message says what to pass instead."""


def parse_spec(text: str) -> Spec:
    """'senet:filters=32' -> ('senet', {'filters': 32}), checked against the model registry."""
    name, *fields = text.strip().split(":")
    overrides = {}
    for field in fields:
        key, sep, value = field.partition("=")
        if not sep or not value.strip().isdigit():
            raise BenchError(f"bad model spec {text!r}: write name[:field=int...], e.g. senet:filters=32")
        overrides[key.strip()] = int(value)
    models.get(name, **overrides)  # raises a one-line ValueError naming the valid fields.
    return name, overrides


def spec_label(spec: Spec) -> str:
    name, overrides = spec
    return ":".join([name, *(f"{k}={v}" for k, v in overrides.items())])


@functools.lru_cache(maxsize=None)
def _synthetic_data() -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images and int32 labels of MNIST's training-set shape."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (TRAIN_SIZE, *IMAGE_SHAPE), dtype=np.uint8)
    return images, rng.integers(0, 10, TRAIN_SIZE).astype(np.int32)


def param_count(spec: Spec) -> int:
    model = models.get(spec[0], **spec[1])
    shapes = jax.eval_shape(lambda: model.init(
        {"params": jax.random.key(0), "dropout": jax.random.key(1)},
        jnp.zeros((1, *IMAGE_SHAPE), jnp.float32), train=False))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes["params"]))


def _model_fields(spec: Spec, dtype: str) -> tuple:
    """The spec's fields plus the compute dtype, hashable (the caches' key)."""
    return tuple(spec[1].items()) + ((("dtype", jnp.bfloat16),) if dtype == "bfloat16" else ())


# Compiling `init_members` and the step dominates the harness's own run time (tens of seconds
# each on a busy CPU) and the tables reuse configurations, so both are built once per process.
@functools.lru_cache(maxsize=None)
def _initial_state(name: str, overrides: tuple, members: int, layout: engine.Layout | None = None) -> tuple:
    model = models.get(name, **dict(overrides))
    # A constant learning rate: the schedule's length does not matter.
    tx = optim.build({"name": "adam", "learning_rate": LEARNING_RATE, "eps": ADAM_EPS},
                     steps_per_epoch=1, num_epochs=1)
    mesh = engine.layout_mesh(layout) if layout else engine.make_mesh(members)
    state = engine.init_members(model, tx, engine.member_keys(0, members),
                                jnp.zeros((1, *IMAGE_SHAPE), jnp.float32), ema=False, mesh=mesh)
    return model, tx, mesh, state


@functools.lru_cache(maxsize=None)
def _train_step(name: str, overrides: tuple, members: int, batch: int, steps: int, strategy: str,
                augment_items: tuple | None, steps_per_call: int = 1,
                layout: engine.Layout | None = None) -> tuple:
    model, tx, mesh, _ = _initial_state(name, overrides, members, layout)
    images, labels = (engine.put_replicated(a, mesh) for a in _synthetic_data())
    keys = engine.member_keys(0, members)
    order = jax.device_put(
        engine.epoch_order(keys, engine.member_bags(keys, TRAIN_SIZE, TRAIN_SIZE), 0, steps, batch),
        engine.member_sharding(mesh))
    augment_fn = None if augment_items is None else augment.build(
        ml_collections.ConfigDict(dict(augment_items)))
    train_step = engine.make_train_step(
        model, tx, mesh=mesh, augment_fn=augment_fn, steps_per_epoch=steps, batch_size=batch,
        label_smoothing=0.0, l1=0.0, l1_params="head/kernel", ema_decay=0.0, strategy=strategy,
        steps_per_call=steps_per_call)
    return images, labels, order, train_step


def jax_timer(spec: Spec, *, batch: int, members: int, steps: int, warmup: int, strategy: str,
              augment_cfg: dict | None = None, dtype: str = "float32",
              steps_per_call: int = 1, hparams: dict[str, Sequence[float]] | None = None,
              layout: engine.Layout | None = None) -> Timer:
    """Warmed up (compiled, then `warmup` calls): each call times `steps` real engine steps,
    `steps_per_call` of them per compiled call (a device loop; `steps` must be a multiple).
    `hparams` (`run.member_hparams` names -> one value per member) trains a sweep: the step reads them
    from the member state. `layout` (members, data) places them (default: the members alone over
    the devices, `engine.make_mesh`)."""
    if steps % steps_per_call:
        raise ValueError(f"steps ({steps}) must be a multiple of steps_per_call ({steps_per_call})")
    name, overrides = spec[0], _model_fields(spec, dtype)
    _, _, mesh, state = _initial_state(name, overrides, members, layout)
    images, labels, order, train_step = _train_step(
        name, overrides, members, batch, steps, strategy,
        None if augment_cfg is None else tuple(augment_cfg.items()), steps_per_call, layout)
    state = jax.tree.map(jnp.copy, state)  # the step donates its state; keep the cached one.
    if hparams:
        state["hparams"] = jax.device_put({k: jnp.asarray(v, jnp.float32) for k, v in hparams.items()},
                                          engine.member_sharding(mesh))
    metrics = jax.device_put(engine.new_metrics(members), engine.member_sharding(mesh))

    step = jnp.int32(0)  # then counted on the device, as the train loop does
    def run(calls: int) -> float:
        nonlocal state, metrics, step
        start = time.perf_counter()
        for _ in range(calls):
            state, metrics, step = train_step(state, metrics, step, images, labels, order)
        jax.block_until_ready((state, metrics))
        return time.perf_counter() - start

    run(1 + warmup)  # the first call compiles.
    return lambda: run(steps // steps_per_call)


def input_timer(*, batch: int, steps: int, warmup: int, augment_cfg: dict | None) -> Timer:
    """Like `jax_timer`, but only the step's batch gather + cast (+ augmentation), jitted alone."""
    images = jax.device_put(_synthetic_data()[0])
    order = jax.random.permutation(jax.random.key(0), TRAIN_SIZE)[: steps * batch].astype(jnp.int32)
    augment_fn = None if augment_cfg is None else augment.build(ml_collections.ConfigDict(augment_cfg))

    @jax.jit
    def load(step, images, order):  # the first lines of engine.make_train_step's member step.
        idx = jax.lax.dynamic_slice_in_dim(order, (step % steps) * batch, batch)
        x = images[idx].astype(jnp.float32) / 255.0
        return x if augment_fn is None else augment_fn(jax.random.fold_in(jax.random.key(0), step), x)

    step = 0
    def run(count: int) -> float:
        nonlocal step
        start = time.perf_counter()
        outs = []
        for _ in range(count):
            outs.append(load(jnp.int32(step), images, order))
            step += 1
        jax.block_until_ready(outs)
        return time.perf_counter() - start

    run(1 + warmup)  # the first call compiles.
    return lambda: run(steps)


def torch_timer(spec: Spec, *, batch: int, steps: int, warmup: int, channels_last: bool,
                dtype: str = "float32", device: str = "cpu") -> Timer:
    """The PyTorch twin of `jax_timer` for one member, on `device` ('cpu' or 'cuda'); on CUDA
    each repeat ends with `torch.cuda.synchronize`, as `jax_timer`'s ends by blocking."""
    import torch
    import torch_peer
    from torch.nn import functional as F

    torch.manual_seed(0)
    model = torch_peer.get(spec[0], **spec[1])
    flax_count, torch_count = param_count(spec), torch_peer.count_params(model)
    if flax_count != torch_count:
        raise RuntimeError(f"torch_peer {spec_label(spec)} has {torch_count:,} parameters, the Flax "
                           f"model {flax_count:,}; fix the layer shapes in experiments/torch_peer.py")
    layout = torch.channels_last if channels_last else torch.contiguous_format
    dev = torch.device(device)
    model = model.to(device=dev, memory_format=layout).train()
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, eps=ADAM_EPS, fused=True)
    images, labels = _synthetic_data()
    images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(dev)  # uint8 NCHW.
    labels = torch.from_numpy(labels).long().to(dev)
    perm = torch.randperm(TRAIN_SIZE)[: steps * batch].to(dev)
    loss_sum, correct = torch.zeros((), device=dev), torch.zeros((), dtype=torch.long, device=dev)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    step = 0
    def run(count: int) -> float:
        nonlocal step, loss_sum, correct
        start = time.perf_counter()
        for _ in range(count):
            idx = perm[(step % steps) * batch:][:batch]
            x = (images[idx].float() / 255.0).contiguous(memory_format=layout)
            y = labels[idx]
            with autocast:
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            # The engine's running metrics, kept as tensors so nothing syncs mid-repeat.
            loss_sum = loss_sum + loss.detach()
            correct = correct + (logits.detach().argmax(1) == y).sum()
            step += 1
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - start

    run(1 + warmup)
    return lambda: run(steps)


def alternate(runs: dict[str, Timer], repeats: int) -> dict[str, list[float]]:
    """Time each run once per round, round after round, so drift and noise hit all of them."""
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            times[key].append(run())
    return times


def compare(specs: Sequence[Spec], batches: Sequence[int], args,
            torch_device: str = "cpu") -> list[dict[str, Any]]:
    rows = []
    for spec in specs:
        params = param_count(spec)
        for batch in batches:
            print(f"compare {spec_label(spec)} batch {batch} ...", file=sys.stderr, flush=True)
            common = {"batch": batch, "steps": args.steps, "warmup": args.warmup,
                      "dtype": args.dtype}
            runs = {"jax": jax_timer(spec, members=1, strategy=args.strategy, **common)}
            layout = None
            if not args.no_torch:
                probes = {cl: torch_timer(spec, channels_last=cl, device=torch_device, **common)
                          for cl in (False, True)}
                probe = {cl: run() for cl, run in probes.items()}
                layout = probe[True] < probe[False]
                runs["torch"] = probes[layout]
            times = alternate(runs, args.repeats)
            ips = {side: batch * args.steps / statistics.median(t) for side, t in times.items()}
            rows.append({
                "model": spec_label(spec), "params": params, "batch": batch,
                "jax_images_per_s": ips["jax"], "torch_images_per_s": ips.get("torch"),
                "ratio_jax_over_torch": ips["jax"] / ips["torch"] if "torch" in ips else None,
                "torch_channels_last": layout, "times_s": times})
    return rows


def scaling(specs: Sequence[Spec], members: Sequence[int], args) -> list[dict[str, Any]]:
    rows = []
    counts = sorted(set(members) | {1})  # efficiency is relative to M = 1.
    for spec in specs:
        print(f"scaling {spec_label(spec)} M={counts} ...", file=sys.stderr, flush=True)
        runs = {m: jax_timer(spec, batch=args.scaling_batch, members=m, steps=args.steps,
                             warmup=args.warmup, strategy=args.strategy, dtype=args.dtype)
                for m in counts}
        times = alternate(runs, args.repeats)
        total = {m: m * args.scaling_batch * args.steps / statistics.median(t) for m, t in times.items()}
        rows += [{"model": spec_label(spec), "batch": args.scaling_batch, "members": m,
                  "images_per_s": total[m], "per_member_images_per_s": total[m] / m,
                  "efficiency": total[m] / total[1], "times_s": times[m]}
                 for m in counts if m in members]
    return rows


def input_share(specs: Sequence[Spec], args) -> list[dict[str, Any]]:
    rows = []
    for spec in specs:
        print(f"input share {spec_label(spec)} ...", file=sys.stderr, flush=True)
        aug = AUGMENTS[spec[0]]
        common = {"batch": args.scaling_batch, "steps": args.steps, "warmup": args.warmup}
        one = {"members": 1, "strategy": args.strategy, "dtype": args.dtype, **common}
        runs = {
            "step": jax_timer(spec, **one),
            "step_augmented": jax_timer(spec, augment_cfg=aug, **one),
            "batching": input_timer(augment_cfg=None, **common),
            "batching_augment": input_timer(augment_cfg=aug, **common),
        }
        ms = {k: 1e3 * statistics.median(t) / args.steps for k, t in alternate(runs, args.repeats).items()}
        rows.append({"model": spec_label(spec), "augment": aug, "batch": args.scaling_batch,
                     **{f"{k}_ms": v for k, v in ms.items()},
                     "batching_share": ms["batching"] / ms["step"],
                     "batching_augment_share": ms["batching_augment"] / ms["step_augmented"]})
    return rows


# The sweep of the cost table: each member its own learning rate, label smoothing and rotation,
# against the same step with one value for all (augmented with rotation either way).
SWEEP_AUGMENT = {"rotation": 10.0}


def sweep_cost(specs: Sequence[Spec], members: int, args) -> list[dict[str, Any]]:
    """The speed of a swept step (per-member values read from the state) over the same step
    without a sweep, timed alternately."""
    rows = []
    for spec in specs:
        print(f"sweep cost {spec_label(spec)} M={members} ...", file=sys.stderr, flush=True)
        spread = np.linspace(0.5, 2.0, members)
        common = dict(batch=args.scaling_batch, members=members, steps=args.steps, warmup=args.warmup,
                      strategy=args.strategy, dtype=args.dtype, augment_cfg=SWEEP_AUGMENT)
        runs = {"plain": jax_timer(spec, **common),
                "swept": jax_timer(spec, hparams={"lr_scale": spread, "label_smoothing": spread / 20,
                                                  "rotation": 10.0 * spread}, **common)}
        times = {k: statistics.median(t) for k, t in alternate(runs, args.repeats).items()}
        rows.append({"model": spec_label(spec), "batch": args.scaling_batch, "members": members,
                     "swept": ["learning_rate", "label_smoothing", "augment.rotation"],
                     "plain_images_per_s": members * args.scaling_batch * args.steps / times["plain"],
                     "swept_images_per_s": members * args.scaling_batch * args.steps / times["swept"],
                     "ratio_swept_over_plain": times["plain"] / times["swept"]})
    return rows


def markdown(results: dict[str, Any]) -> str:
    def num(v, places=0):
        return "-" if v is None else metrics.truncated(v, places)

    lines = ["| model | params | batch | JAX img/s | PyTorch img/s | JAX / PyTorch | torch channels-last |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    lines += [f"| {r['model']} | {r['params']:,} | {r['batch']} | {num(r['jax_images_per_s'])} | "
              f"{num(r['torch_images_per_s'])} | {num(r['ratio_jax_over_torch'], 2)} | "
              f"{'-' if r['torch_channels_last'] is None else r['torch_channels_last']} |" for r in results["comparison"]]
    lines += ["", "| model | batch | members M | total img/s | per-member img/s | efficiency |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['model']} | {r['batch']} | {r['members']} | {num(r['images_per_s'])} | "
              f"{num(r['per_member_images_per_s'])} | {num(r['efficiency'], 2)} |" for r in results["scaling"]]
    lines += ["", "| model + its augmentation | batch | step ms | gather ms (share) | "
              "augmented step ms | gather + augment ms (share) |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['model']} | {r['batch']} | {r['step_ms']:.2f} | {r['batching_ms']:.2f} "
              f"({r['batching_share']:.0%}) | {r['step_augmented_ms']:.2f} | "
              f"{r['batching_augment_ms']:.2f} ({r['batching_augment_share']:.0%}) |"
              for r in results["input_share"]]
    if results.get("sweep_cost"):  # JSONs from before the sweep have none
        lines += ["", "| model | batch | members | plain img/s | swept img/s | swept / plain |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['model']} | {r['batch']} | {r['members']} | {num(r['plain_images_per_s'])} | "
                  f"{num(r['swept_images_per_s'])} | {num(r['ratio_swept_over_plain'], 2)} |"
                  for r in results["sweep_cost"]]
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive ints, got {text!r}")
    return values


def _specs(text: str) -> list[Spec]:
    try:
        return [parse_spec(s) for s in text.split(",") if s.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=_specs, default=[parse_spec(s) for s in DEFAULT_MODELS],
                   help="comma-separated name[:field=int] specs for the JAX/PyTorch comparison")
    p.add_argument("--batches", type=_ints, default=[32, 64, 128], help="comparison batch sizes")
    p.add_argument("--members", type=_ints, default=[1, 4, 8], help="member counts for the scaling table")
    p.add_argument("--scaling-models", type=_specs, default=[parse_spec("tiny20k")],
                   help="models for the member-scaling table ('' to skip)")
    p.add_argument("--augment-models", type=_specs,
                   default=[parse_spec("tiny20k"), parse_spec("resnet_committee")],
                   help=f"models for the input-share table, with their recipe's augmentation "
                        f"({', '.join(AUGMENTS)}; '' to skip)")
    p.add_argument("--sweep-models", type=_specs, default=[parse_spec("tiny20k")],
                   help="models for the sweep-cost table: a swept step against a plain one ('' to skip)")
    p.add_argument("--sweep-members", type=int, default=4, help="members of the sweep-cost table")
    p.add_argument("--scaling-batch", type=int, default=128,
                   help="batch of the scaling and input-share tables")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per side (median reported)")
    p.add_argument("--steps", type=int, default=20, help="train steps per timed repeat")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after the compiling one")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="compute dtype of both sides (bfloat16: PyTorch under autocast)")
    p.add_argument("--strategy", choices=STRATEGIES, default=engine.default_strategy(),
                   help="engine member strategy (default: the backend's)")
    p.add_argument("--out", default="bench.json",
                   help="JSON file to write (not results.json: that name is a run's)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch side")
    p.add_argument("--torch-threads", type=int, default=2,
                   help="torch.set_num_threads (XLA:CPU uses every core it sees)")
    p.add_argument("--table", metavar="JSON",
                   help="print the tables of a JSON this script wrote, and measure nothing")
    args = p.parse_args(argv)
    if args.table:
        try:
            with open(args.table) as f:
                args.table_results = json.load(f)
        except (OSError, ValueError) as e:
            p.error(f"--table {args.table}: not a readable JSON ({e})")
        if not isinstance(args.table_results, dict) or not {
                "comparison", "scaling", "input_share"} <= set(args.table_results):
            p.error(f"--table {args.table}: not a JSON written by this script")
        return args
    for flag in ("repeats", "steps", "scaling_batch", "torch_threads", "sweep_members"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    largest = max([*args.batches, args.scaling_batch])
    if args.steps * largest > TRAIN_SIZE:
        p.error(f"--steps {args.steps} x batch {largest} exceeds the {TRAIN_SIZE} images of one "
                f"epoch; lower --steps")
    unknown = [spec_label(s) for s in args.augment_models if s[0] not in AUGMENTS]
    if unknown:
        p.error(f"--augment-models {unknown} have no recipe augmentation; choose from {', '.join(AUGMENTS)}")
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            p.error("PyTorch is not installed: pip install -e '.[bench]', or pass --no-torch")
        import torch_peer  # next to this script, so on sys.path when it runs.
        missing = [spec_label(s) for s in args.models if s[0] not in torch_peer.names()]
        if missing:
            p.error(f"no PyTorch peer for {missing}; peers exist for {', '.join(torch_peer.names())} "
                    f"(or pass --no-torch)")
        torch.set_num_threads(args.torch_threads)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    configure_cpu()
    args = parse_args(argv)
    if args.table:
        print(markdown(args.table_results))
        return args.table_results
    meta = {"jax": jax.__version__, "backend": jax.default_backend(), "devices": len(jax.devices()),
            "cpu_count": os.cpu_count(), "cpu_model": cpu_model(),
            "platform": platform.platform(), "strategy": args.strategy, "dtype": args.dtype,
            "conv_backend": conv_backend(), "malloc": malloc_mode(),
            "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup,
            "optimizer": {"name": "adam", "learning_rate": LEARNING_RATE, "eps": ADAM_EPS},
            "load_average_before": os.getloadavg()}
    if not args.no_torch:
        import torch
        meta.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    results = {"meta": meta,
               "comparison": compare(args.models, args.batches, args),
               "scaling": scaling(args.scaling_models, args.members, args),
               "input_share": input_share(args.augment_models, args),
               "sweep_cost": sweep_cost(args.sweep_models, args.sweep_members, args)}
    meta["load_average_after"] = os.getloadavg()  # well above 0 means other work skewed the times.
    print(markdown(results))
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
