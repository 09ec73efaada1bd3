"""A config's train step lowered for another platform, on any machine: what a GPU or TPU would run.

JAX lowers a program for any platform without its device (`lower(lowering_platforms=...)`), so
a CPU-only machine can check that the native CPU code (oneDNN's custom calls, chosen by
`lax.platform_dependent`) never enters a GPU or TPU program.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import ml_collections

from mnist_jax import engine, run as run_lib

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
_CUSTOM_CALL = re.compile(r"stablehlo\.custom_call @([\w.$-]+)")


def train_step_text(config: ml_collections.ConfigDict, platform: str, num_classes: int = 10) -> str:
    """The StableHLO text of the config's (augmented) train step lowered for `platform`, on
    this machine's mesh; nothing is computed or compiled."""
    if platform not in PLATFORMS:
        raise ValueError(f"cannot lower for {platform!r}; choose from {', '.join(PLATFORMS)}")
    run_lib.validate(config)
    steps_per_epoch = 2
    setup = run_lib.setup(config, num_classes, steps_per_epoch)
    step = run_lib.train_step(setup, steps_per_epoch=steps_per_epoch,
                              steps_per_call=run_lib.steps_per_call(config))
    members = jax.eval_shape(lambda: run_lib.init_state(setup).members)
    size, images = config.image_size, steps_per_epoch * config.batch_size
    args = (members, jax.eval_shape(lambda: engine.new_metrics(config.num_members)),
            jax.ShapeDtypeStruct((), jnp.int32),
            jax.ShapeDtypeStruct((images, size, size, 1), jnp.uint8),
            jax.ShapeDtypeStruct((images,), jnp.int32),
            jax.ShapeDtypeStruct((config.num_members, images), jnp.int32))
    with jax.threefry_partitionable(engine.partitionable_threefry(setup.mesh)):  # as the engine runs it
        return step.__wrapped__.trace(*args).lower(lowering_platforms=(platform,)).as_text()


def custom_calls(text: str) -> list[str]:
    """The custom-call targets a lowered program calls, sorted, each once."""
    return sorted(set(_CUSTOM_CALL.findall(text)))
