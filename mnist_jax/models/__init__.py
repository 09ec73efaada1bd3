"""The model zoo: every architecture by name, built with checked field overrides.

    model = models.get("senet", filters=32, dtype=jnp.bfloat16)
    variables = model.init({"params": k1, "dropout": k2}, x, train=False)

Every model maps NHWC float pixels in [0, 1] to float32 logits [B, num_classes], normalises its
own input (`input_mean` / `input_std`), keeps BatchNorm statistics in `batch_stats`, uses the
`dropout` rng, and names its classifier Dense `head`.
"""

import dataclasses
import numbers
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mnist_jax.models import simple
from mnist_jax.models.baseline import Baseline
from mnist_jax.models.deotte import Deotte
from mnist_jax.models.resnet_committee import ResNetCommittee
from mnist_jax.models.senet import SENet
from mnist_jax.models.tiny20k import Tiny20k

# name -> (module class, field values that define this variant).
_REGISTRY: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "senet": (SENet, {}),
    "deotte": (Deotte, {}),
    "tiny20k": (Tiny20k, {}),
    "resnet_committee": (ResNetCommittee, {}),
    "baseline": (Baseline, {}),
    "baseline_bn": (Baseline, {"batch_norm": True}),
    "simple_m3": (simple.SimpleNet, simple.M3),
    "simple_m5": (simple.SimpleNet, simple.M5),
    "simple_m7": (simple.SimpleNet, simple.M7),
}

_DTYPE_FIELDS = ("dtype", "param_dtype")


def names() -> list[str]:
    """All registered model names."""
    return list(_REGISTRY)


def get(name: str, **overrides: Any) -> nn.Module:
    """Builds model `name`; `overrides` replace its field defaults (checked for name and type)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(names())}")
    cls, preset = _REGISTRY[name]
    valid = {f.name: f.type for f in _fields(cls)}
    listing = ", ".join(f"{k}: {_type_name(k, t)}" for k, t in valid.items())
    checked = {}
    for key, value in overrides.items():
        if key not in valid:
            raise ValueError(f"model {name!r} has no field {key!r}; valid fields: {listing}")
        checked[key] = _check(key, value, valid[key])
        if checked[key] is None:
            raise ValueError(f"model {name!r} field {key!r} must be {_type_name(key, valid[key])}, "
                             f"got {value!r}; valid fields: {listing}")
    return cls(**{**preset, **checked})


def fields(model: nn.Module) -> dict[str, Any]:
    """The field values that define `model`'s network (its dtypes aside), JSON-ready. A checkpoint
    records them, so a run whose model defaults changed since is refused rather than resumed."""
    values = {f.name: getattr(model, f.name) for f in _fields(type(model)) if f.name not in _DTYPE_FIELDS}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _fields(cls: type[nn.Module]) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]


def _type_name(key: str, annotation: Any) -> str:
    if key == "param_dtype":
        return "float32"
    if key == "dtype":
        return "a float dtype"
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "positive int"
    if annotation is float:
        return "float"
    return "tuple of positive ints"


def _check(key: str, value: Any, annotation: Any) -> Any:
    """`value` converted to the field's type, or None if it does not fit."""
    if key in _DTYPE_FIELDS:
        try:
            dtype = jnp.dtype(value)
        except TypeError:
            return None
        wanted = jnp.issubdtype(dtype, jnp.floating) and (key == "dtype" or dtype == jnp.float32)
        return dtype if wanted else None
    if annotation is bool:
        return value if isinstance(value, bool) else None
    if annotation is int:
        return int(value) if _positive_int(value) else None
    if annotation is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        return float(value) if ok else None
    # tuple[int, ...]; lists are accepted because configs often hold lists.
    ok = isinstance(value, (tuple, list)) and value and all(_positive_int(v) for v in value)
    return tuple(int(v) for v in value) if ok else None


def _positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0
