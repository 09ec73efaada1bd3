"""What a config builds: a run's static parts (model, optimiser, mesh, strategy, predictors) and its
state, freshly initialised or restored from the run folder.

The train loop, `analysis` and the tests all build runs here, so a restored ensemble is made
exactly as it was trained. `Setup` holds no arrays: it can be built outside `jax.eval_shape`
and the abstract state traced from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mnist_jax import augment, checkpoint, config as config_lib, data, engine, models, optim, runfolder


class Setup(NamedTuple):
    """The static parts of a run: no arrays, the same for a fresh and a restored run."""
    config: ml_collections.ConfigDict
    model: Any
    tx: Any
    mesh: Any
    strategy: str


class State(NamedTuple):
    """The arrays of a run: every member's state, the running epoch metrics, and the step."""
    members: dict
    metrics: dict
    step: int
    wall_time_s: float


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuse an impossible config in one line, before any data is read or code compiled: the
    schema's own checks, then each module's for its section (for every group of a grouped config)."""
    config_lib.validate(config)
    for name, group in config_lib.group_configs(config).items():
        try:
            validate(group)
        except ValueError as e:
            raise config_lib.ConfigError(f"{e} (in groups.{name})") from None
    if config.model not in models.names():
        raise config_lib.ConfigError(
            f"config: unknown model {config.model!r}; valid: {', '.join(models.names())}")
    models.get(config.model, **config.model_overrides.to_dict())
    augment.build(config.augment)
    optim.build(config.optim, steps_per_epoch=1, num_epochs=config.num_epochs, snapshot=config.snapshot)
    for i in range(config.num_members if config_lib.swept(config) else 0):  # each member's values
        member = config_lib.member_config(config, i)
        try:
            augment.build(member.augment)
            optim.build(member.optim, steps_per_epoch=1, num_epochs=config.num_epochs,
                        snapshot=config.snapshot)
        except ValueError as e:
            raise config_lib.ConfigError(f"{e} (sweep, member {i})") from None


def load_split(config: ml_collections.ConfigDict, split: str) -> data.Dataset:
    """A split of the config's dataset (train cut to `train_subset` when that is set)."""
    seed = None if config.validation_seed < 0 else config.validation_seed
    ds = data.load(config.dataset, split, config.data_dir or None, image_size=config.image_size,
                   validation_size=config.validation_size, validation_seed=seed)
    if split == "train" and config.train_subset:
        ds = ds._replace(images=ds.images[:config.train_subset], labels=ds.labels[:config.train_subset])
    return ds


def setup(config: ml_collections.ConfigDict, num_classes: int, steps_per_epoch: int) -> Setup:
    """Model, optimiser (its schedule needs the epoch length), mesh and member strategy.

    A restored run may pass any `steps_per_epoch`: the optimiser state's structure does not
    depend on the schedule's length.
    """
    dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32
    model = models.get(config.model, num_classes=num_classes, dtype=dtype,
                       **config.model_overrides.to_dict())
    tx = optim.build(config.optim, steps_per_epoch=steps_per_epoch, num_epochs=config.num_epochs,
                     inject_weight_decay="optim.weight_decay" in config_lib.swept(config),
                     snapshot=config.snapshot)
    strategy = engine.default_strategy() if config.member_strategy == "auto" else config.member_strategy
    data_parallel = (engine.data_parallel_default() if config.data_parallel == "auto"
                     else config.data_parallel == "on")
    cost = (engine.member_cost(model, (config.image_size, config.image_size, 1)) if data_parallel
            else None)  # what a data axis would save and cost (engine.mesh_shape's rule)
    mesh = engine.make_mesh(config.num_members, data_parallel=data_parallel,
                            batch_sizes=(config.batch_size,), strategy=strategy, member_cost=cost)
    return Setup(config, model, tx, mesh, strategy)


# Where each sweepable config field lives in the member state (`state["hparams"]`); the weight decay
# lives in the optimiser's state (optim.set_weight_decay).
_HPARAM_OF = {"optim.learning_rate": "lr_scale", "label_smoothing": "label_smoothing",
              "ema_decay": "ema_decay", "augment.rotation": "rotation", "augment.shift": "shift",
              "augment.zoom": "zoom", "augment.elastic_alpha": "elastic_alpha"}


def member_hparams(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """A sweep's per-member values as the train step reads them ({} without a sweep); the
    learning rate as a factor on the config's schedule."""
    hparams = {}
    for path, values in config_lib.swept(config).items():
        if path not in _HPARAM_OF:
            continue
        values = np.asarray(values, np.float64)
        if path == "optim.learning_rate":
            values = values / config.optim.learning_rate
        hparams[_HPARAM_OF[path]] = values.astype(np.float32)
    return hparams


def swept_augment(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The augment fields a sweep sets (on for the compiled step, per member in value)."""
    return tuple(p.split(".")[1] for p in config_lib.swept(config) if p.startswith("augment."))


def ema_on(config: ml_collections.ConfigDict) -> bool:
    """Whether members keep an EMA of their parameters (and are evaluated with it)."""
    return bool(config.ema_decay) or any(config_lib.swept(config).get("ema_decay", ()))


def member_keys(setup: Setup) -> jax.Array:
    return engine.member_keys(setup.config.seed, setup.config.num_members)


def new_metrics(setup: Setup) -> dict[str, jax.Array]:
    return jax.device_put(engine.new_metrics(setup.config.num_members),
                          engine.member_sharding(setup.mesh))


def init_state(setup: Setup) -> State:
    """Fresh members (each from `seed + i`), laid out over the mesh."""
    c = setup.config
    sample = jnp.zeros((1, c.image_size, c.image_size, 1), jnp.float32)
    members = engine.init_members(setup.model, setup.tx, member_keys(setup), sample,
                                  ema=ema_on(c), mesh=setup.mesh, hparams=member_hparams(c),
                                  snapshots=c.snapshot.cycles, swa=bool(c.swa.epochs))
    if "optim.weight_decay" in config_lib.swept(c):
        decay = jax.device_put(jnp.asarray(config_lib.swept(c)["optim.weight_decay"], jnp.float32),
                               engine.member_sharding(setup.mesh))
        members = {**members, "opt_state": optim.set_weight_decay(members["opt_state"], decay)}
    return State(members, new_metrics(setup), 0, 0.0)


def _abstract(setup: Setup) -> dict:
    """Shapes, dtypes and shardings of the checkpointed tree, traced rather than computed."""
    shapes = jax.eval_shape(lambda: _tree(init_state(setup)))
    sharding = engine.member_sharding(setup.mesh)  # every leaf is laid out by member
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def _tree(state: State) -> dict:
    return {"state": state.members, "metrics": state.metrics}


def _fingerprint(setup: Setup) -> dict:
    """What a checkpoint resumes only into: the config's fields and the model's, defaults included."""
    return {**config_lib.fingerprint(setup.config), "model_fields": models.fields(setup.model)}


def _saved_fingerprint(setup: Setup, saved: dict) -> dict:
    saved = dict(saved)
    # Checkpoints written before the model's fields were recorded resume with today's defaults.
    fields = saved.pop("model_fields", models.fields(setup.model))
    return {**config_lib.saved_fingerprint(saved), "model_fields": fields}


def restore(setup: Setup, workdir: Path) -> State | None:
    """The newest readable checkpoint of `workdir`, or None when it has none."""
    if not runfolder.has_checkpoint(workdir):
        return None
    mngr = checkpoint.manager(workdir, setup.config.keep_checkpoints)
    try:
        restored = checkpoint.restore_latest(mngr, _abstract(setup), _fingerprint(setup),
                                             upgrade=lambda saved: _saved_fingerprint(setup, saved))
    finally:
        mngr.close()
    if restored is None:
        raise checkpoint.CheckpointError(
            f"no readable checkpoint in {runfolder.checkpoint_dir(workdir)}: every one failed to "
            f"load; delete the folder to start over")
    tree, meta = restored
    return State(tree["state"], tree["metrics"], int(meta["step"]), float(meta["wall_time_s"]))


def save(setup: Setup, mngr: Any, state: State) -> None:
    meta = {"config": _fingerprint(setup), "step": state.step,
            "wall_time_s": state.wall_time_s}
    checkpoint.save(mngr, state.step, _tree(state), meta)


def steps_per_call(config: ml_collections.ConfigDict) -> int:
    """Train steps per compiled call: the config's, else the backend's default."""
    return config.steps_per_call or engine.default_steps_per_call()


def _train_augment(config: ml_collections.ConfigDict, clean: bool) -> Callable | None:
    return None if clean else augment.build(config.augment, swept=swept_augment(config))


def train_step(setup: Setup, *, steps_per_epoch: int, clean: bool = False,
               steps_per_call: int = 1) -> Callable:
    """The config's compiled train step (`engine.make_train_step`): augmented as the config
    (and its sweep) says, or on clean images for the final epochs with `clean`."""
    c = setup.config
    swa_start = (c.num_epochs - c.swa.epochs) * steps_per_epoch if c.swa.epochs else None
    return engine.make_train_step(
        setup.model, setup.tx, mesh=setup.mesh, augment_fn=_train_augment(c, clean),
        steps_per_epoch=steps_per_epoch, batch_size=c.batch_size,
        label_smoothing=c.label_smoothing, l1=c.l1, l1_params=c.l1_params,
        ema_decay=c.ema_decay, strategy=setup.strategy, steps_per_call=steps_per_call,
        swa_start=swa_start)


def recompute_swa_bn(setup: Setup, *, steps_per_epoch: int, clean: bool) -> Callable:
    """`recompute(members, images, order) -> members` with the SWA weights' BatchNorm statistics
    recomputed (`engine.make_recompute_bn`) over the first `swa.bn_batches` batches of an epoch
    (all of them for 0), passed as the last epoch trained them (`clean` or augmented)."""
    c = setup.config
    return engine.make_recompute_bn(
        setup.model, mesh=setup.mesh, augment_fn=_train_augment(c, clean), batch_size=c.batch_size,
        num_batches=min(c.swa.bn_batches or steps_per_epoch, steps_per_epoch), strategy=setup.strategy)


def predictor(setup: Setup, *, tta: bool = False) -> Callable:
    """`predict(weights, images_uint8, key) -> logits [M, B, C]` of weights with a leading member
    axis (`live_weights`, `ensemble_rows`), through the config's test-time augmentation when
    `tta`, else through `augment.eval_view` (the centre crop of a config that trains on crops)."""
    c = setup.config
    augment_fn = augment.build(c.augment, test_time=True) if tta else augment.eval_view(c.augment)
    return engine.make_predict(setup.model, mesh=setup.mesh, strategy=setup.strategy,
                               augment_fn=augment_fn)


def live_weights(setup: Setup, members: dict) -> dict:
    """The weights each member is evaluated with now (its EMA when the config keeps one)."""
    return engine.evaluated_weights(members, use_ema=ema_on(setup.config))


def ensemble_rows(setup: Setup, members: dict) -> list[dict]:
    """The weights of each of a member's ensemble rows (`row_records`), each with the member
    axis leading: its snapshots (or else its final weights), then its SWA average."""
    c = setup.config
    if c.snapshot.cycles:
        rows = [jax.tree.map(lambda a, j=j: a[:, j], members["snapshots"])
                for j in range(c.snapshot.cycles)]
    else:
        rows = [live_weights(setup, members)]
    return rows + ([members["swa"]] if c.swa.epochs else [])


def row_records(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """What each of a member's ensemble rows is, in `ensemble_rows`' order: its kind
    ('final', 'snapshot' or 'swa') and the epoch its weights come from (SWA: the window's
    first and last epoch too). predictions.npz's rows are member-major: row m * R + r is row r
    of member m, R = len(row_records(config))."""
    records = ([{"kind": "snapshot", "epoch": e}
                for e in optim.snapshot_epochs(config.snapshot, config.num_epochs)]
               or [{"kind": "final", "epoch": config.num_epochs}])
    if config.swa.epochs:
        records.append({"kind": "swa", "epoch": config.num_epochs,
                        "swa_epochs": [config.num_epochs - config.swa.epochs + 1, config.num_epochs]})
    return records
