"""The ensemble engine: pure functions that init, train and apply M members in one program.

The state is plain data with a leading member axis. Every random choice of member i (init,
bag, epoch order, augmentation, dropout) is derived from `seed + i` and the step, so members
trained together equal members trained alone, and a resumed run replays exactly.

The mesh is 2-D, members × data. Members are independent, so the member axis is split with
`shard_map` and needs no collective; inside a device, members run either vectorised (`vmap`) or
unrolled one after another in the same program (`unroll`, faster on the CPU). Where members alone
cannot fill the devices (15 members on 8 GPUs, or 1), each member's batch is split over the data
axis: `shard_map` leaves that axis to XLA, which partitions the batch and reduces gradients and
BatchNorm statistics across it, so the numbers are those of one device up to float rounding.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MEMBER_AXIS = "members"
# A sweep's per-member values the train step reads from `state["hparams"]` (else its own
# constants; `run.member_hparams` makes them): "lr_scale" (a factor on the schedule),
# "label_smoothing", "ema_decay", and these, which go to the augmentation.
AUGMENT_HPARAMS = ("rotation", "shift", "zoom", "elastic_alpha")
DATA_AXIS = "data"
# Evaluation holds at most this many (member, image) pairs per device at once, so a 35-member
# committee on one device evaluates in batches of 228 images, not 35 x 1,000.
EVAL_PAIRS_PER_DEVICE = 8000
State = dict[str, Any]

# Sub-streams of a member's key: fold_in(member_key, STREAM) keeps them independent.
_INIT, _BAG, _ORDER, _NOISE = range(4)


def _classic_threefry(fn: Callable) -> Callable:
    """Run `fn` with the classic (non-partitionable) threefry.

    A member's random numbers are drawn on the one device that holds the member, so nothing
    here needs the partitionable variant, and XLA:CPU compiled programs drawing with it several
    times slower (an exploratory timing of the init of three tiny20k members).
    """
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.threefry_partitionable(False):
            return fn(*args, **kwargs)
    return wrapped


def member_keys(seed: int, num_members: int) -> jax.Array:
    """Raw uint32 keys [M, 2]; member i's key is PRNGKey(seed + i) so it can be trained alone."""
    return jnp.stack([jax.random.PRNGKey(seed + i) for i in range(num_members)])


def mesh_shape(num_members: int, num_devices: int, *, data_parallel: bool,
               batch_sizes: tuple[int, ...] = ()) -> tuple[int, int]:
    """(members, data): the layout that uses the most devices, the member axis a divisor of the
    member count and the data axis one of every batch size; of equals, the most members apart
    (no collectives). 8 members on 4 devices: (4, 1); 15 on 8: (1, 8); without data parallelism
    the data axis is 1 (15 on 8: (5, 1))."""
    best = (1, 1)
    for members in range(1, num_devices + 1):
        if num_members % members:
            continue
        most = num_devices // members if data_parallel else 1
        data = max(d for d in range(1, most + 1) if all(b % d == 0 for b in batch_sizes))
        if members * data >= best[0] * best[1]:
            best = (members, data)
    return best


def make_mesh(num_members: int, devices: list | None = None, *, data_parallel: bool = False,
              batch_sizes: tuple[int, ...] = ()) -> Mesh:
    """A members × data mesh (`mesh_shape`) over the first devices."""
    devices = list(jax.devices() if devices is None else devices)
    members, data = mesh_shape(num_members, len(devices), data_parallel=data_parallel,
                               batch_sizes=batch_sizes)
    return Mesh(np.array(devices[:members * data]).reshape(members, data), (MEMBER_AXIS, DATA_AXIS))


def data_parallel_default() -> bool:
    """Split batches over devices on GPU/TPU; not on the CPU, where members already fill the
    cores and oneDNN's custom calls cannot be partitioned (XLA would replicate them)."""
    return jax.default_backend() != "cpu"


def _shard_members(fn: Callable, mesh: Mesh, in_specs: tuple, out_specs: Any) -> Callable:
    """`shard_map` over the member axis; a data axis of more than one device is left to XLA."""
    manual = {MEMBER_AXIS} if mesh.shape[DATA_AXIS] > 1 else set(mesh.axis_names)
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                         axis_names=manual, check_vma=False)


def _split_batch(x: jax.Array, mesh: Mesh) -> jax.Array:
    """Lay a batch out over the data axis (a no-op without one)."""
    if mesh.shape[DATA_AXIS] == 1:
        return x
    return jax.lax.with_sharding_constraint(x, P(DATA_AXIS))  # inside shard_map: its mesh


def eval_batch_size(requested: int, num_images: int, mesh: Mesh, num_members: int) -> int:
    """The evaluation batch: at most `requested` images, at most EVAL_PAIRS_PER_DEVICE (member,
    image) pairs per device, a multiple of the data axis."""
    data = mesh.shape[DATA_AXIS]
    local_members = max(1, num_members // mesh.shape[MEMBER_AXIS])
    batch = min(requested, num_images, max(1, EVAL_PAIRS_PER_DEVICE * data // local_members))
    return -(-batch // data) * data


def member_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(MEMBER_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def put_replicated(array: np.ndarray, mesh: Mesh) -> jax.Array:
    """Put a host array on every device of the mesh (also across hosts)."""
    return jax.make_array_from_callback(array.shape, replicated(mesh), lambda index: array[index])


def to_host(x: jax.Array) -> np.ndarray:
    """A (possibly member-sharded, possibly multi-host) array as one host numpy array."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _per_member(fn: Callable, strategy: str) -> Callable:
    """Run `fn(member_args, *shared)` over the local member axis, vectorised or unrolled.

    'unroll' traces the members one after another into the same program; on the CPU it beats
    `vmap` (a vmapped convolution becomes a grouped one, which XLA:CPU runs slowly) and any
    loop primitive (`lax.map`, `scan` and `fori_loop` bodies ran at half speed here).
    """
    if strategy == "vmap":
        return lambda member_args, *shared: jax.vmap(lambda m: fn(m, *shared))(member_args)

    def unrolled(member_args, *shared):
        count = jax.tree.leaves(member_args)[0].shape[0]
        outs = [fn(jax.tree.map(lambda a: a[i], member_args), *shared) for i in range(count)]
        return jax.tree.map(lambda *a: jnp.stack(a), *outs)
    return unrolled


def init_members(model: nn.Module, tx: optax.GradientTransformation, keys: jax.Array,
                 sample: jax.Array, *, ema: bool, mesh: Mesh,
                 hparams: dict[str, jax.Array] | None = None) -> State:
    """Initial state of every member, laid out over the mesh. `hparams` (name -> [M] values) are
    a sweep's per-member hyperparameters, which the train step reads from the state;
    without a sweep the state has no `hparams` (so checkpoints from before sweeps still load)."""
    def init_one(key, hparams):
        k_params, k_dropout = jax.random.split(jax.random.fold_in(key, _INIT))
        variables = model.init({"params": k_params, "dropout": k_dropout}, sample, train=False)
        params = variables["params"]
        return {
            "params": params,
            "batch_stats": variables.get("batch_stats", {}),
            "opt_state": tx.init(params),
            "ema_params": params if ema else {},
            "key": key,
            **({"hparams": hparams} if hparams else {}),
        }
    init_all = jax.jit(jax.vmap(init_one), out_shardings=member_sharding(mesh))
    return _classic_threefry(init_all)(keys, {k: jnp.asarray(v, jnp.float32) for k, v in (hparams or {}).items()})


@_classic_threefry
def member_bags(keys: jax.Array, train_size: int, pool_size: int) -> jax.Array:
    """Each member's own training subset [M, pool] (all images, in order, without bagging)."""
    if pool_size == train_size:
        return jnp.broadcast_to(jnp.arange(train_size, dtype=jnp.int32), (keys.shape[0], train_size))
    def bag(key):
        return jax.random.permutation(jax.random.fold_in(key, _BAG), train_size)[:pool_size]
    return jax.vmap(bag)(keys).astype(jnp.int32)


@_classic_threefry
def epoch_order(keys: jax.Array, bags: jax.Array, epoch: int | jax.Array, steps: int,
                batch_size: int) -> jax.Array:
    """Image indices [M, steps * batch] of one epoch: a fresh permutation of each member's bag."""
    def order(key, bag):
        key = jax.random.fold_in(jax.random.fold_in(key, _ORDER), epoch)
        return jax.random.permutation(key, bag)[: steps * batch_size]
    return jax.vmap(order)(keys, bags)


def _l1_mask(params: Any, pattern: str) -> Any:
    regex = re.compile(pattern)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: bool(regex.search("/".join(str(getattr(p, "key", p)) for p in path))), params)


def new_metrics(num_members: int) -> dict[str, jax.Array]:
    """Per-member running sums of one epoch, and the first step whose loss was not finite."""
    return {
        "loss_sum": jnp.zeros((num_members,), jnp.float32),
        "correct": jnp.zeros((num_members,), jnp.int32),
        "count": jnp.zeros((num_members,), jnp.int32),
        "first_bad_step": jnp.full((num_members,), -1, jnp.int32),
    }


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *, mesh: Mesh,
                    augment_fn: Callable | None, steps_per_epoch: int, batch_size: int,
                    label_smoothing: float, l1: float, l1_params: str, ema_decay: float,
                    strategy: str, steps_per_call: int = 1) -> Callable:
    """Compile `train_step(state, metrics, step, images, labels, order) -> (state, metrics, next)`.

    Steps `step .. step + steps_per_call - 1` of every member, each reading its batch from the
    on-device uint8 dataset through the epoch `order`; `next` is the device-side step counter to
    pass back, so nothing is uploaded from the host per call. Several steps per call (a
    `fori_loop` on the device) spare the step the host's dispatch gaps (`default_steps_per_call`).
    The steps must stay within one epoch (`order`).
    """
    def loss_fn(params, batch_stats, x, y, key, l1_mask, label_smoothing):
        logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                      train=True, rngs={"dropout": key}, mutable=["batch_stats"])
        logits = logits.astype(jnp.float32)
        targets = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        if l1:
            penalty = sum(jnp.abs(w).sum() for w, m in zip(jax.tree.leaves(params),
                                                           jax.tree.leaves(l1_mask)) if m)
            loss = loss + l1 * penalty
        correct = (logits.argmax(-1) == y).sum()
        return loss, (updates.get("batch_stats", {}), correct)

    def member_step(carry, step, images, labels):
        member, metrics, order = carry
        pos = (step % steps_per_epoch) * batch_size
        idx = _split_batch(jax.lax.dynamic_slice_in_dim(order, pos, batch_size), mesh)
        x = _split_batch(images[idx].astype(jnp.float32) / 255.0, mesh)
        y = _split_batch(labels[idx], mesh)
        noise = jax.random.fold_in(jax.random.fold_in(member["key"], _NOISE), step)
        k_aug, k_dropout = jax.random.split(noise)
        hparams = member.get("hparams", {})  # a sweep's values; which ones is fixed at trace time
        if augment_fn is not None:
            x = augment_fn(k_aug, x, {k: hparams[k] for k in AUGMENT_HPARAMS if k in hparams})
        l1_mask = _l1_mask(member["params"], l1_params)
        (loss, (batch_stats, correct)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            member["params"], member["batch_stats"], x, y, k_dropout, l1_mask,
            hparams.get("label_smoothing", label_smoothing))
        updates, opt_state = tx.update(grads, member["opt_state"], member["params"])
        if "lr_scale" in hparams:  # every optimiser here is lr * direction: scale the update
            updates = jax.tree.map(lambda u: u * hparams["lr_scale"], updates)
        params = optax.apply_updates(member["params"], updates)
        ema_params = member["ema_params"]
        if ema_params:  # kept when ema_decay (or a swept one) is on; warmed up as TF's
            # ExponentialMovingAverage(num_updates=step): early evaluations average recent
            # weights, not the initial ones (which BN stats don't fit).
            decay = jnp.minimum(hparams.get("ema_decay", ema_decay), (1.0 + step) / (10.0 + step))
            ema_params = optax.incremental_update(params, ema_params, 1.0 - decay)
        member = {**member, "params": params, "batch_stats": batch_stats, "opt_state": opt_state,
                  "ema_params": ema_params}
        metrics = {
            "loss_sum": metrics["loss_sum"] + loss,
            "correct": metrics["correct"] + correct,
            "count": metrics["count"] + y.shape[0],
            "first_bad_step": jnp.where((metrics["first_bad_step"] < 0) & ~jnp.isfinite(loss),
                                        step, metrics["first_bad_step"]),
        }
        return member, metrics

    run = _per_member(member_step, strategy)

    def steps(state, metrics, step, images, labels, order):
        if steps_per_call == 1:
            state, metrics = run((state, metrics, order), step, images, labels)
        else:
            state, metrics = jax.lax.fori_loop(
                0, steps_per_call,
                lambda i, carry: run((*carry, order), step + i, images, labels), (state, metrics))
        return state, metrics, step + steps_per_call

    sharded = _shard_members(
        steps, mesh, in_specs=(P(MEMBER_AXIS), P(MEMBER_AXIS), P(), P(), P(), P(MEMBER_AXIS)),
        out_specs=(P(MEMBER_AXIS), P(MEMBER_AXIS), P()))
    return _classic_threefry(jax.jit(sharded, donate_argnums=(0, 1, 2)))


def make_predict(model: nn.Module, *, mesh: Mesh, strategy: str, use_ema: bool,
                 augment_fn: Callable | None = None) -> Callable:
    """Compile `predict(state, images_uint8, key) -> float32 logits [M, B, C]` in eval mode."""
    def member_logits(member, images, key):
        x = _split_batch(images.astype(jnp.float32) / 255.0, mesh)
        if augment_fn is not None:
            x = augment_fn(jax.random.fold_in(key, 0), x)
        params = member["ema_params"] if use_ema else member["params"]
        logits = model.apply({"params": params, "batch_stats": member["batch_stats"]}, x, train=False)
        return logits.astype(jnp.float32)

    run = _per_member(member_logits, strategy)
    sharded = _shard_members(lambda state, images, key: run(state, images, key), mesh,
                             in_specs=(P(MEMBER_AXIS), P(), P()), out_specs=P(MEMBER_AXIS))
    return _classic_threefry(jax.jit(sharded))


def default_steps_per_call() -> int:
    """1 until measured on the machines whose budgets count: on a Zen 4 CPU 4 steps a call trained
    tiny20k 1.15-1.24x and deotte 1.01x faster (experiments/results/speed.md), not yet measured
    on the Zen 3, and each K adds a compiled program; on GPU/TPU `experiments/accelerator_check.py`
    measures 1, 4 and 16."""
    return 1


def default_strategy() -> str:
    """Members unrolled on the CPU (measured faster there), vectorised on accelerators."""
    return "unroll" if jax.default_backend() == "cpu" else "vmap"

