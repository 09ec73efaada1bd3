"""The ensemble engine: pure functions that init, train and apply M members in one program.

The state is plain data with a leading member axis. Every random choice of member i (init,
bag, epoch order, augmentation, dropout) is derived from `seed + i` and the step, so members
trained together equal members trained alone, and a resumed run replays exactly.

The mesh is 2-D, members × data. Members are independent, so the member axis is split with
`shard_map` and needs no collective; inside a device, members run either vectorised (`vmap`) or
unrolled one after another in the same program (`unroll`, faster on the CPU). Where a cost rule
says the devices' work saved outweighs the collectives (`mesh_shape`: 1 member on 8 GPUs, not 35),
each member's batch is split over the data axis: `shard_map` leaves that axis to XLA, which
partitions the batch and reduces gradients and BatchNorm statistics across it, so the numbers are
those of one device (drawing with the partitionable threefry) up to float rounding.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mnist_jax.ops.norm import BATCH_MOMENTS

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
_INIT, _BAG, _ORDER, _NOISE, _SWA_BN = range(5)


def _with_threefry(fn: Callable, partitionable: bool) -> Callable:
    """Run `fn` with the classic or the partitionable threefry."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.threefry_partitionable(partitionable):
            return fn(*args, **kwargs)
    return wrapped


def _classic_threefry(fn: Callable) -> Callable:
    """Run `fn` with the classic (non-partitionable) threefry.

    A member's random numbers are drawn on the one device that holds the member, so nothing
    here needs the partitionable variant, and XLA:CPU compiled programs drawing with it several
    times slower (an exploratory timing of the init of three tiny20k members).
    """
    return _with_threefry(fn, False)


def partitionable_threefry(mesh: Mesh) -> bool:
    """Whether the train step draws dropout and augmentation with the partitionable threefry:
    only where a member's batch spans devices (a data axis), so that each device draws its own
    share; the classic one would draw the whole batch on every device and exchange the bits
    (collective-permutes and all-gathers in the compiled step). Members that each sit on one
    device keep the classic numbers, bitwise (tests/test_engine.py)."""
    return mesh.shape[DATA_AXIS] > 1


def member_keys(seed: int, num_members: int) -> jax.Array:
    """Raw uint32 keys [M, 2]; member i's key is PRNGKey(seed + i) so it can be trained alone."""
    return jnp.stack([jax.random.PRNGKey(seed + i) for i in range(num_members)])


# What a byte through a collective costs, in FLOPs of the device that sends it: an H100 SXM runs
# ~500 TFLOP/s in TF32 (~1,000 in bfloat16) against NVLink's 450 GB/s each way, a TPU v5e 197
# TFLOP/s against ~200 GB/s of ICI. An order of magnitude is what the choice needs (layouts
# differ by factors); GPUs linked by PCIe pay ~30x more a byte.
FLOPS_PER_COLLECTIVE_BYTE = 1000.0
Layout = tuple[int, int]  # (devices along the member axis, along the data axis)


@dataclasses.dataclass(frozen=True)
class MemberCost:
    """One member's training step as `layout_cost` weighs it (`member_cost` makes it)."""
    flops_per_image: float  # 3 x XLA's FLOPs of a forward pass (backward ~ 2 x forward)
    collective_bytes: float  # all-reduced per step when its batch is split: float32 gradients + BN statistics


def forward_flops(model: nn.Module, variables: Any, x: jax.ShapeDtypeStruct) -> float:
    """XLA's FLOP estimate for `model.apply(variables, x, train=False)`, on any machine: lowered
    for CUDA, so no oneDNN custom call (whose FLOPs XLA cannot count) hides a convolution."""
    traced = jax.jit(lambda v, x: model.apply(v, x, train=False)).trace(variables, x)
    cost = traced.lower(lowering_platforms=("cuda",)).cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per device program
        cost = cost[0]
    return float(cost["flops"])


def member_cost(model: nn.Module, image_shape: tuple[int, ...]) -> MemberCost:
    """`model`'s MemberCost on images of `image_shape` (height, width, channels), from shapes
    alone: nothing is computed or compiled."""
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(
        {"params": jax.random.key(0), "dropout": jax.random.key(1)}, jnp.zeros(x.shape), train=False))
    reduced = jax.tree.leaves((variables["params"], variables.get("batch_stats", {})))
    return MemberCost(3 * forward_flops(model, variables, x), 4.0 * sum(leaf.size for leaf in reduced))


def layouts(num_members: int, num_devices: int, *, data_parallel: bool,
            batch_sizes: tuple[int, ...] = ()) -> list[Layout]:
    """The layouts `mesh_shape` weighs: first the members alone over the most devices (the member
    axis the largest divisor of the member count that fits), then, with data parallelism, each
    divisor of the member count with the widest data axis that fits beside it and divides every
    batch size. A narrower data axis is left out: it all-reduces as many bytes for more work."""
    divisors = [m for m in range(1, min(num_members, num_devices) + 1) if num_members % m == 0]
    found = [(divisors[-1], 1)]
    for members in divisors if data_parallel else ():
        data = max(d for d in range(1, num_devices // members + 1) if all(b % d == 0 for b in batch_sizes))
        if data > 1:
            found.append((members, data))
    return found


def layout_cost(layout: Layout, num_members: int, batch_size: int, cost: MemberCost,
                strategy: str) -> float:
    """A step's cost on one device, in FLOPs: its members' share of the batch x FLOPs per image,
    plus FLOPS_PER_COLLECTIVE_BYTE x the bytes its data axis all-reduces for them.

    Vectorised members that share a device save no work by splitting their batch: XLA does not
    partition a vmapped (grouped) convolution's weight gradient over the batch but gathers the
    activations of the whole batch on every device (tests/test_layouts.py counts it in the
    compiled steps; experiments/results/speed.md, "Layouts by cost"), so they count the whole batch.
    """
    members, data = num_members // layout[0], layout[1]
    if data == 1:
        return members * batch_size * cost.flops_per_image
    images = batch_size if strategy == "vmap" and members > 1 else batch_size / data
    return members * (images * cost.flops_per_image + FLOPS_PER_COLLECTIVE_BYTE * cost.collective_bytes)


def mesh_shape(num_members: int, num_devices: int, *, data_parallel: bool,
               batch_sizes: tuple[int, ...] = (), strategy: str = "vmap",
               member_cost: MemberCost | None = None,
               costs: Mapping[Layout, float] | None = None) -> Layout:
    """(members, data): the cheapest of `layouts`, by this rule.

    A data axis splits each member's batch over devices, which cuts a device's work, and
    all-reduces every member's gradients and BatchNorm statistics every step; it is taken only
    where the work it saves outweighs those bytes (`layout_cost`, from the model's
    `member_cost`). `costs` (per layout: step times `experiments/accelerator_check.py` measured,
    or the costs of the compiled steps) replaces the estimate: the cheapest layout it lists wins.
    Without either, or without a batch size, no data axis: its cost is unknown. Of equals, the
    earlier layout (fewer collectives). 35 members on 8 devices: (7, 1), five members a device
    and no collective, not (1, 8), which all-reduces all 35 members' gradients on every device;
    1 tiny20k member on 8 devices: (1, 8).
    """
    candidates = layouts(num_members, num_devices, data_parallel=data_parallel, batch_sizes=batch_sizes)
    if costs is not None:
        listed = [c for c in candidates if c in costs]
        if not listed:
            raise ValueError(f"the costs given ({sorted(costs)}) name none of the layouts {candidates}")
        return min(listed, key=costs.__getitem__)
    if member_cost is None or not batch_sizes:
        return candidates[0]
    return min(candidates, key=lambda c: layout_cost(c, num_members, max(batch_sizes), member_cost, strategy))


def layout_mesh(layout: Layout, devices: list | None = None) -> Mesh:
    """The members × data mesh of `layout` over the first devices."""
    devices = list(jax.devices() if devices is None else devices)
    members, data = layout
    return Mesh(np.array(devices[:members * data]).reshape(members, data), (MEMBER_AXIS, DATA_AXIS))


def make_mesh(num_members: int, devices: list | None = None, *, data_parallel: bool = False,
              batch_sizes: tuple[int, ...] = (), strategy: str = "vmap",
              member_cost: MemberCost | None = None) -> Mesh:
    """The mesh of `mesh_shape`'s layout over the first devices."""
    devices = list(jax.devices() if devices is None else devices)
    return layout_mesh(mesh_shape(num_members, len(devices), data_parallel=data_parallel,
                                  batch_sizes=batch_sizes, strategy=strategy,
                                  member_cost=member_cost), devices)


def data_parallel_default() -> bool:
    """Let `mesh_shape` weigh a data axis on GPU/TPU; not on the CPU, where members already fill
    the cores and oneDNN's custom calls cannot be partitioned (XLA would replicate them)."""
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
                 hparams: dict[str, jax.Array] | None = None, snapshots: int = 0,
                 swa: bool = False) -> State:
    """Initial state of every member, laid out over the mesh. `hparams` (name -> [M] values) are
    a sweep's per-member hyperparameters, which the train step reads from the state; `snapshots`
    slots hold the weights taken at the end of each cycle (`take_snapshot`) and `swa` the running
    average of the weights (`make_train_step`'s `swa_start`). Each part is in the state only when
    used, so checkpoints from before it still load."""
    def init_one(key, hparams):
        k_params, k_dropout = jax.random.split(jax.random.fold_in(key, _INIT))
        variables = model.init({"params": k_params, "dropout": k_dropout}, sample, train=False)
        params = variables["params"]
        weights = {"params": params, "batch_stats": variables.get("batch_stats", {})}
        return {
            **weights,
            "opt_state": tx.init(params),
            "ema_params": params if ema else {},
            "key": key,
            **({"hparams": hparams} if hparams else {}),
            **({"snapshots": jax.tree.map(lambda a: jnp.zeros((snapshots, *a.shape), a.dtype), weights)}
               if snapshots else {}),
            **({"swa": weights} if swa else {}),
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


def _training_batch(images: jax.Array, order: jax.Array, pos: jax.Array | int, key: jax.Array,
                    hparams: dict[str, jax.Array], *, augment_fn: Callable | None, batch_size: int,
                    mesh: Mesh) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A member's batch at `pos` of its epoch `order` as training sees it: gathered from the
    on-device uint8 images, scaled to [0, 1], augmented with half of `key` (a sweep's values from
    `hparams`). Returns the image indices, the images and the dropout key (the other half)."""
    idx = _split_batch(jax.lax.dynamic_slice_in_dim(order, pos, batch_size), mesh)
    x = _split_batch(images[idx].astype(jnp.float32) / 255.0, mesh)
    k_aug, k_dropout = jax.random.split(key)
    if augment_fn is not None:
        x = augment_fn(k_aug, x, {k: hparams[k] for k in AUGMENT_HPARAMS if k in hparams})
    return idx, x, k_dropout


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *, mesh: Mesh,
                    augment_fn: Callable | None, steps_per_epoch: int, batch_size: int,
                    label_smoothing: float, l1: float, l1_params: str, ema_decay: float,
                    strategy: str, steps_per_call: int = 1, swa_start: int | None = None) -> Callable:
    """Compile `train_step(state, metrics, step, images, labels, order) -> (state, metrics, next)`.

    Steps `step .. step + steps_per_call - 1` of every member, each reading its batch from the
    on-device uint8 dataset through the epoch `order`; `next` is the device-side step counter to
    pass back, so nothing is uploaded from the host per call. Several steps per call (a
    `fori_loop` on the device) spare the step the host's dispatch gaps (`default_steps_per_call`).
    The steps must stay within one epoch (`order`). From step `swa_start` on, `state["swa"]`
    holds the running mean of the parameters after every step (the raw ones, not the EMA).
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
        hparams = member.get("hparams", {})  # a sweep's values; which ones is fixed at trace time
        noise = jax.random.fold_in(jax.random.fold_in(member["key"], _NOISE), step)
        idx, x, k_dropout = _training_batch(images, order, (step % steps_per_epoch) * batch_size,
                                            noise, hparams, augment_fn=augment_fn,
                                            batch_size=batch_size, mesh=mesh)
        y = _split_batch(labels[idx], mesh)
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
        if swa_start is not None:  # the mean of the n + 1 parameter sets since swa_start
            n = (step - swa_start).astype(jnp.float32)
            member["swa"] = {**member["swa"], "params": jax.tree.map(
                lambda mean, p: jnp.where(n >= 0, mean + (p - mean) / (n + 1.0), mean),
                member["swa"]["params"], params)}
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
    return _with_threefry(jax.jit(sharded, donate_argnums=(0, 1, 2)), partitionable_threefry(mesh))


def evaluated_weights(members: State, *, use_ema: bool) -> State:
    """What each member is evaluated with now: {"params" (the EMA when kept), "batch_stats"}."""
    return {"params": members["ema_params"] if use_ema else members["params"],
            "batch_stats": members["batch_stats"]}


def take_snapshot(members: State, index: int, *, use_ema: bool, mesh: Mesh) -> State:
    """`members` with their evaluated weights written into snapshot slot `index`."""
    return _take_snapshot(members, index, use_ema, member_sharding(mesh))


@functools.partial(jax.jit, static_argnums=(2, 3), donate_argnums=0)  # one program for every slot
def _take_snapshot(members, index, use_ema, sharding):
    weights = evaluated_weights(members, use_ema=use_ema)
    snapshots = jax.tree.map(lambda slots, w: slots.at[:, index].set(w), members["snapshots"], weights)
    return jax.lax.with_sharding_constraint({**members, "snapshots": snapshots}, sharding)


def make_recompute_bn(model: nn.Module, *, mesh: Mesh, augment_fn: Callable | None,
                      batch_size: int, num_batches: int, strategy: str) -> Callable:
    """Compile `recompute(state, images, order) -> state` whose `state["swa"]["batch_stats"]` are
    the mean, over the first `num_batches` batches of the epoch `order`, of each BatchNorm
    layer's own batch statistics under the SWA weights (Izmailov et al.'s bn_update: the running
    averages belong to other weights). The batches pass as in training (augmentation, dropout),
    with keys of their own; nothing else in the state changes."""
    def member_stats(carry, images):
        member, order = carry
        hparams = member.get("hparams", {})
        key = jax.random.fold_in(member["key"], _SWA_BN)

        def batch_moments(i):
            _, x, k_dropout = _training_batch(images, order, i * batch_size, jax.random.fold_in(key, i),
                                              hparams, augment_fn=augment_fn, batch_size=batch_size,
                                              mesh=mesh)
            _, moments = model.apply({"params": member["swa"]["params"],
                                      "batch_stats": member["swa"]["batch_stats"]}, x, train=True,
                                     rngs={"dropout": k_dropout}, mutable=["batch_stats", BATCH_MOMENTS])
            return moments.get(BATCH_MOMENTS, {})

        sums = jax.lax.fori_loop(1, num_batches, lambda i, total: jax.tree.map(
            jnp.add, total, batch_moments(i)), batch_moments(0))
        stats = jax.tree.map(lambda total: total / num_batches, sums)
        return {**member, "swa": {**member["swa"], "batch_stats": stats}}

    run = _per_member(member_stats, strategy)
    sharded = _shard_members(lambda state, images, order: run((state, order), images), mesh,
                             in_specs=(P(MEMBER_AXIS), P(), P(MEMBER_AXIS)), out_specs=P(MEMBER_AXIS))
    return _with_threefry(jax.jit(sharded, donate_argnums=0), partitionable_threefry(mesh))


def make_predict(model: nn.Module, *, mesh: Mesh, strategy: str,
                 augment_fn: Callable | None = None) -> Callable:
    """Compile `predict(weights, images_uint8, key) -> float32 logits [M, B, C]` in eval mode, of
    weights {"params", "batch_stats"} with a leading member axis (`evaluated_weights`, or a
    snapshot or SWA row: `run.ensemble_rows`)."""
    def member_logits(member, images, key):
        x = _split_batch(images.astype(jnp.float32) / 255.0, mesh)
        if augment_fn is not None:
            x = augment_fn(jax.random.fold_in(key, 0), x)
        logits = model.apply({"params": member["params"], "batch_stats": member["batch_stats"]},
                             x, train=False)
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

