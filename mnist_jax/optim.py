"""Optimisers and learning-rate schedules, built from optax and driven by the `optim` config section.

`build` wraps the optimiser in `optax.inject_hyperparams`, so the learning rate (and b1 / momentum)
lives in the optimiser state: the trainer logs it with `current_learning_rate`, and an ensemble can
`jax.vmap` both init and update over a member axis.

Choices where the recipes' frameworks disagree:
  * `eps` defaults to 1e-7 (Keras), since most recipes are ports of Keras kernels; PyTorch uses
    1e-8. optax, like PyTorch, adds eps outside the square root of the bias-corrected second moment.
  * `weight_decay` is decoupled for 'adamw' (p -= lr * wd * p, as torch/Keras AdamW). For 'adam',
    'nadam' and 'sgd' it is coupled L2 (wd * p added to the clipped gradient before the moments),
    as torch's `weight_decay` argument. It applies to every parameter (no mask).
  * 'nadam' is optax's Nesterov Adam (`scale_by_adam(nesterov=True)`), without torch's
    momentum-decay schedule.
  * Schedules count optimiser updates from 0; epochs become steps via `steps_per_epoch`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, Union

import jax
import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZERS = ("adam", "adamw", "nadam", "sgd")
SCHEDULES = ("constant", "piecewise", "one_cycle", "exponential", "warmup_cosine")
ANNEALS = ("cos", "linear")

Schedule = Callable[[jax.typing.ArrayLike], jax.Array]
Config = Union[ml_collections.ConfigDict, Mapping[str, Any]]


def default_config() -> ml_collections.ConfigDict:
    """The `optim` config section: Adam at a constant 1e-3 unless overridden."""
    return ml_collections.ConfigDict({
        "name": "adam",
        "learning_rate": 1e-3,  # peak LR for one_cycle / warmup_cosine, base LR otherwise.
        "b1": 0.9,
        "b2": 0.999,
        "eps": 1e-7,
        "momentum": 0.9,  # sgd only.
        "nesterov": False,  # sgd only.
        "weight_decay": 0.0,
        "grad_clip": 0.0,  # max global gradient norm; 0 disables clipping.
        "schedule": {
            "name": "constant",
            # piecewise: values[i] is the LR itself (learning_rate is unused) before boundaries[i]
            # (in epochs). Read it as schedule["values"]: attribute access gives the dict method.
            "boundaries": [],
            "values": [],
            # one_cycle, with PyTorch OneCycleLR (two-phase) semantics.
            "pct_start": 0.25,
            "div_factor": 25.0,
            "final_div_factor": 1e4,
            "anneal": "cos",
            "cycle_momentum": False,  # cycles b1 (adam family) or momentum (sgd) against the LR.
            "base_momentum": 0.85,
            "max_momentum": 0.95,
            # exponential: LR = learning_rate * decay_rate ** epoch.
            "decay_rate": 0.95,
            # warmup_cosine: linear 0 -> learning_rate, then cosine down to 0 at the end.
            "warmup_epochs": 1.0,
        },
    })


def make_schedules(cfg: Config, *, steps_per_epoch: int, num_epochs: int,
                   snapshot: Config | None = None) -> dict[str, Schedule]:
    """Hyperparameter name -> schedule of the update count.

    Always has "learning_rate"; with `schedule.cycle_momentum` also "b1" (adam family) or
    "momentum" (sgd), named after the optimiser argument it drives. A `snapshot` section with
    `cycles` > 0 (config.snapshot) replaces the learning rate by `cyclic_schedule`'s cycles.
    """
    cfg = _resolve(cfg, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs, snapshot=snapshot)
    if snapshot is not None and snapshot["cycles"]:
        return {"learning_rate": cyclic_schedule(cfg, snapshot, steps_per_epoch=steps_per_epoch,
                                                 num_epochs=num_epochs)}
    return _schedules(cfg, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs)


def _schedules(cfg: ml_collections.ConfigDict, *, steps_per_epoch: int, num_epochs: int
               ) -> dict[str, Schedule]:
    """The config's own schedules over `num_epochs` (cfg already resolved)."""
    sched, lr = cfg.schedule, cfg.learning_rate
    total_steps = steps_per_epoch * num_epochs
    if sched.name == "constant":
        lr_fn = optax.constant_schedule(lr)
    elif sched.name == "piecewise":
        lr_fn = _piecewise([round(b * steps_per_epoch) for b in sched.boundaries], sched["values"])
    elif sched.name == "exponential":
        lr_fn = _epoch_exponential(lr, sched.decay_rate, steps_per_epoch)
    elif sched.name == "warmup_cosine":
        lr_fn = optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=lr, warmup_steps=round(sched.warmup_epochs * steps_per_epoch),
            decay_steps=total_steps)
    else:  # one_cycle
        start = lr / sched.div_factor
        lr_fn = _one_cycle(start, lr, start / sched.final_div_factor, sched.pct_start, total_steps, sched.anneal)
    schedules = {"learning_rate": lr_fn}
    if sched.cycle_momentum:
        schedules[_momentum_name(cfg.name)] = _one_cycle(
            sched.max_momentum, sched.base_momentum, sched.max_momentum, sched.pct_start, total_steps, sched.anneal)
    return schedules


def peak_learning_rate(cfg: Config) -> float:
    """The highest rate of the config's schedule: the largest piecewise value, else
    `learning_rate` (the peak of one_cycle and warmup_cosine, the start of the others)."""
    if cfg["schedule"]["name"] == "piecewise":
        return float(max(cfg["schedule"]["values"]))
    return float(cfg["learning_rate"])


def cyclic_schedule(cfg: Config, snapshot: Config, *, steps_per_epoch: int, num_epochs: int) -> Schedule:
    """Snapshot ensembles' learning rate: `warm_epochs` of the config's own schedule (built over
    those epochs, so it runs its whole course there), then `cycles` equal cycles over the rest.

    Each cycle runs from `high` to `low` (factors on `peak_learning_rate`) and ends at `low`,
    where the snapshot is taken: 'cosine' is Huang et al. (2017), low + (high - low) / 2 *
    (1 + cos(pi * t / c)) at step t of a cycle of c steps; 'fge' is Garipov et al.'s (2018)
    triangle, shifted half a cycle so that it ends at its low point: up from low to high in the
    first half, back down to low at the cycle's last step.
    """
    cfg = _resolve(cfg, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs, snapshot=snapshot)
    peak = peak_learning_rate(cfg)
    high, low = snapshot["high"] * peak, snapshot["low"] * peak
    warm_steps = snapshot["warm_epochs"] * steps_per_epoch
    cycle_steps = (num_epochs - snapshot["warm_epochs"]) * steps_per_epoch // snapshot["cycles"]
    last = snapshot["cycles"] * cycle_steps - 1
    warm = (_schedules(cfg, steps_per_epoch=steps_per_epoch, num_epochs=snapshot["warm_epochs"])
            ["learning_rate"] if warm_steps else None)

    def schedule(step):
        step = jnp.asarray(step)
        t = jnp.clip(step - warm_steps, 0, last) % cycle_steps
        if snapshot["shape"] == "cosine":
            lr = low + (high - low) / 2.0 * (1.0 + jnp.cos(jnp.pi * t / cycle_steps))
        else:
            u = (t + 1.0) / cycle_steps
            lr = low + (high - low) * (1.0 - jnp.abs(2.0 * u - 1.0))
        lr = jnp.asarray(lr, jnp.float32)
        return lr if warm is None else jnp.where(step < warm_steps, warm(step), lr)

    return schedule


def snapshot_epochs(snapshot: Config, num_epochs: int) -> list[int]:
    """The epochs (1-based) at whose end each cycle ends and its snapshot is taken."""
    if not snapshot["cycles"]:
        return []
    cycle = (num_epochs - snapshot["warm_epochs"]) // snapshot["cycles"]
    return [snapshot["warm_epochs"] + (j + 1) * cycle for j in range(snapshot["cycles"])]


def build(cfg: Config, *, steps_per_epoch: int, num_epochs: int,
          inject_weight_decay: bool = False, snapshot: Config | None = None
          ) -> optax.GradientTransformation:
    """The optimiser, with the LR and b1 (sgd: momentum) injected into its state by optax; with
    `inject_weight_decay` the weight decay too, so each member of a sweep can hold its own
    (`set_weight_decay`); with `snapshot` cycles, their learning rate (`cyclic_schedule`)."""
    cfg = _resolve(cfg, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs, snapshot=snapshot)
    schedules = make_schedules(cfg, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs,
                               snapshot=snapshot)
    momentum_name = _momentum_name(cfg.name)
    factory = functools.partial(_sgd if cfg.name == "sgd" else _adam_family, cfg=cfg)
    injected = {"weight_decay": cfg.weight_decay} if inject_weight_decay else {}
    return optax.inject_hyperparams(factory)(
        learning_rate=schedules["learning_rate"],
        **{momentum_name: schedules.get(momentum_name, cfg[momentum_name])}, **injected)


def set_weight_decay(opt_state: optax.OptState, weight_decay: jax.Array) -> optax.OptState:
    """The state of an optimiser built with `inject_weight_decay`, holding `weight_decay`."""
    return optax.tree_utils.tree_set(opt_state, weight_decay=weight_decay)


def current_learning_rate(opt_state: optax.OptState) -> jax.Array:
    """The learning rate the last update used (after `init`: the one the first update will use)."""
    # The schedule's own state is also keyed "learning_rate"; the rate is the array one.
    lr = optax.tree_utils.tree_get(opt_state, "learning_rate", default=None,
                                   filtering=lambda _, value: isinstance(value, jax.Array))
    if lr is None:
        raise ValueError("opt_state holds no injected learning_rate; create it with optim.build(...).init")
    return lr


def _adam_family(learning_rate, b1, weight_decay=None, *, cfg) -> optax.GradientTransformation:
    adam = optax.scale_by_adam(b1, cfg.b2, cfg.eps, nesterov=cfg.name == "nadam")
    return _chain(cfg, learning_rate, adam, weight_decay)


def _sgd(learning_rate, momentum, weight_decay=None, *, cfg) -> optax.GradientTransformation:
    return _chain(cfg, learning_rate, optax.trace(decay=momentum, nesterov=cfg.nesterov), weight_decay)


def _chain(cfg, learning_rate, moments: optax.GradientTransformation,
           weight_decay=None) -> optax.GradientTransformation:
    """clip -> coupled L2 (not adamw) -> moments -> decoupled decay (adamw) -> -LR scale.
    `weight_decay`: an injected (per-member) value, else the config's."""
    if weight_decay is None:
        decay = [optax.add_decayed_weights(cfg.weight_decay)] if cfg.weight_decay > 0 else []
    else:
        decay = [optax.add_decayed_weights(weight_decay)]
    coupled, decoupled = ([], decay) if cfg.name == "adamw" else (decay, [])
    clip = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    return optax.chain(*clip, *coupled, moments, *decoupled, optax.scale_by_learning_rate(learning_rate))


def _momentum_name(optimizer_name: str) -> str:
    return "momentum" if optimizer_name == "sgd" else "b1"


def _piecewise(boundary_steps: list[int], values: list[float]) -> Schedule:
    """values[i] for steps in [boundary_steps[i-1], boundary_steps[i])."""
    boundaries, values = jnp.asarray(boundary_steps, jnp.int32), jnp.asarray(values, jnp.float32)
    return lambda step: values[jnp.searchsorted(boundaries, step, side="right")]


def _epoch_exponential(lr: float, decay_rate: float, steps_per_epoch: int) -> Schedule:
    """Keras-style per-epoch decay: constant within an epoch (staircase)."""
    return lambda step: lr * jnp.power(decay_rate, jnp.asarray(step) // steps_per_epoch)


def _one_cycle(start: float, peak: float, end: float, pct_start: float, total_steps: int, anneal: str) -> Schedule:
    """PyTorch OneCycleLR (three_phase=False): start -> peak at step pct_start * total - 1, then -> end
    at step total - 1, held there afterwards (PyTorch raises). A warm-up shorter than one step, where
    PyTorch divides by zero, starts at the peak."""
    peak_step = max(pct_start * total_steps - 1.0, 0.0)
    last_step = max(total_steps - 1.0, peak_step + 1.0)

    def interpolate(a, b, pct):
        if anneal == "cos":
            return b + (a - b) / 2.0 * (jnp.cos(jnp.pi * pct) + 1.0)
        return (1.0 - pct) * a + pct * b  # PyTorch's a + (b - a) * pct, exact at both ends in float32.

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        up = jnp.clip(step / peak_step, 0.0, 1.0) if peak_step > 0 else 1.0
        down = jnp.clip((step - peak_step) / (last_step - peak_step), 0.0, 1.0)
        return jnp.where(step <= peak_step, interpolate(start, peak, up), interpolate(peak, end, down))

    return schedule


def _resolve(cfg: Config, *, steps_per_epoch: int, num_epochs: int,
             snapshot: Config | None = None) -> ml_collections.ConfigDict:
    """The defaults overridden by `cfg`, checked (with the `snapshot` section that replaces its
    learning rate, when given); a one-line ValueError on bad input."""
    defaults = default_config()
    _check_keys(cfg, defaults, "optim")
    if "schedule" in cfg.keys():
        if not hasattr(cfg["schedule"], "keys"):
            raise ValueError(f"optim.schedule must be a dict of schedule fields, got {cfg['schedule']!r}")
        _check_keys(cfg["schedule"], defaults.schedule, "optim.schedule")
    try:
        defaults.update(cfg)
    except TypeError as e:
        raise ValueError(f"bad optim config: {e}") from None
    if snapshot is not None and snapshot["cycles"]:
        _validate_snapshot(defaults, snapshot, num_epochs)
        num_epochs = snapshot["warm_epochs"] or num_epochs  # the config's schedule runs in the warm phase
    _validate(defaults, steps_per_epoch, num_epochs)
    return defaults


def _check_keys(cfg: Config, defaults: ml_collections.ConfigDict, where: str) -> None:
    unknown = sorted(set(cfg.keys()) - set(defaults.keys()))
    if unknown:
        raise ValueError(f"unknown {where} field(s) {unknown}; valid fields: {sorted(defaults.keys())}")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _in(cfg: ml_collections.ConfigDict, field: str, where: str, low: float, high: float = math.inf, *,
        low_open: bool = False) -> None:
    """Checks that cfg[field] is a number in [low, high) (or (low, high)); the error names both."""
    value = cfg[field]
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and (low < value if low_open else low <= value) and value < high)
    if high == math.inf:
        wanted = f"a number {'>' if low_open else '>='} {low}"
    else:
        wanted = f"a number in {'(' if low_open else '['}{low}, {high})"
    _require(ok, f"{where}.{field} must be {wanted}, got {value!r}")


SNAPSHOT_SHAPES = ("cosine", "fge")


def _validate_snapshot(cfg: ml_collections.ConfigDict, snapshot: Config, num_epochs: int) -> None:
    cycles, warm, where = snapshot["cycles"], snapshot["warm_epochs"], "snapshot"
    _require(isinstance(cycles, int) and not isinstance(cycles, bool) and cycles >= 0,
             f"{where}.cycles must be an int >= 0 (0: off), got {cycles!r}")
    _require(snapshot["shape"] in SNAPSHOT_SHAPES,
             f"unknown {where}.shape={snapshot['shape']!r}; valid choices: {list(SNAPSHOT_SHAPES)}")
    _require(isinstance(warm, int) and not isinstance(warm, bool) and 0 <= warm < num_epochs,
             f"{where}.warm_epochs must be an int in [0, num_epochs={num_epochs}), got {warm!r}")
    _require((num_epochs - warm) % cycles == 0,
             f"{where}: {num_epochs - warm} epochs after warm_epochs={warm} do not split into "
             f"{cycles} whole cycles; choose cycles dividing {num_epochs - warm} (snapshots are "
             f"taken at epoch ends)")
    _in(snapshot, "high", where, 0.0, low_open=True)
    _in(snapshot, "low", where, 0.0, snapshot["high"])
    _require(not cfg.schedule.cycle_momentum,
             f"{where}.cycles replace the learning-rate schedule, but optim.schedule.cycle_momentum "
             f"cycles the momentum with the one-cycle schedule; turn one of them off")


def _validate(cfg: ml_collections.ConfigDict, steps_per_epoch: int, num_epochs: int) -> None:
    for name, value in (("steps_per_epoch", steps_per_epoch), ("num_epochs", num_epochs)):
        _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                 f"{name} must be a positive int, got {value!r}")
    _require(cfg.name in OPTIMIZERS, f"unknown optimiser optim.name={cfg.name!r}; valid choices: {list(OPTIMIZERS)}")
    _in(cfg, "learning_rate", "optim", 0.0, low_open=True)
    for field in ("b1", "b2", "momentum"):
        _in(cfg, field, "optim", 0.0, 1.0)
    _in(cfg, "eps", "optim", 0.0, low_open=True)
    _in(cfg, "weight_decay", "optim", 0.0)
    _in(cfg, "grad_clip", "optim", 0.0)

    sched, where = cfg.schedule, "optim.schedule"
    _require(sched.name in SCHEDULES, f"unknown schedule {where}.name={sched.name!r}; valid choices: {list(SCHEDULES)}")
    _require(not sched.cycle_momentum or sched.name == "one_cycle",
             f"{where}.cycle_momentum=True needs {where}.name='one_cycle', got {sched.name!r}")
    if sched.name == "piecewise":
        boundaries, values = list(sched.boundaries), list(sched["values"])
        _require(len(values) == len(boundaries) + 1,
                 f"{where}.values needs len(boundaries) + 1 = {len(boundaries) + 1} learning rates, "
                 f"got {len(values)}: {values}")
        _require(all(isinstance(v, (int, float)) and v > 0 for v in values),
                 f"{where}.values must all be positive learning rates, got {values}")
        _require(all(isinstance(b, (int, float)) for b in boundaries)
                 and all(a < b for a, b in zip([0] + boundaries, boundaries)),
                 f"{where}.boundaries must be strictly increasing positive epochs, got {boundaries}")
        _require(not boundaries or boundaries[-1] <= num_epochs,
                 f"{where}.boundaries must not exceed num_epochs={num_epochs}, got {boundaries}")
    elif sched.name == "one_cycle":
        _in(sched, "pct_start", where, 0.0, 1.0, low_open=True)
        _in(sched, "div_factor", where, 0.0, low_open=True)
        _in(sched, "final_div_factor", where, 0.0, low_open=True)
        _require(sched.anneal in ANNEALS, f"unknown {where}.anneal={sched.anneal!r}; valid choices: {list(ANNEALS)}")
        _in(sched, "base_momentum", where, 0.0, 1.0)
        _in(sched, "max_momentum", where, 0.0, 1.0)
    elif sched.name == "exponential":
        _in(sched, "decay_rate", where, 0.0, low_open=True)
    elif sched.name == "warmup_cosine":
        _in(sched, "warmup_epochs", where, 0.0, num_epochs)
