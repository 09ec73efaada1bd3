"""Subprocess half of tests/test_layouts.py: the train step compiled for each candidate layout.

It runs in its own process because the device count is fixed when JAX starts; the test sets
`--xla_force_host_platform_device_count` and `MNIST_JAX_ONEDNN=0`, so the convolutions are XLA's
own and are partitioned as on a GPU or TPU. Nothing is run: each program is compiled and read.

    python tests/layout_worker.py --members=1,15,35   # one JSON object on stdout

Per member count and layout (`engine.layouts`): the collective bytes of one device's program per
step (the operands of its all-reduces, all-gathers, reduce-scatters, collective-permutes and
all-to-alls), its FLOPs (XLA's cost analysis), the cost of the compiled program by the engine's
rule (FLOPs + FLOPS_PER_COLLECTIVE_BYTE x bytes) and `engine.layout_cost`'s estimate; and the
layout `engine.mesh_shape` chooses from each.
"""

from __future__ import annotations

import argparse
import json
import re

import jax
import jax.numpy as jnp
import ml_collections

from mnist_jax import augment, engine, models, optim

BATCH = 128
STEPS_PER_EPOCH = 2
STRATEGY = "vmap"  # the engine's default on GPU/TPU
IMAGE_SHAPE = (28, 28, 1)
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
# '%name = f32[15,8]{1,0} all-reduce(%a, %b), ...' (asynchronous collectives end in '-start')
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.+?) ([a-z][\w\-]*)\(([^)]*)\)")
_OPERAND = re.compile(r"%([\w.\-]+)")
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4,
                "u32": 4, "f64": 8, "s64": 8, "u64": 8}


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape ('f32[15,8]{1,0}', or a tuple of them)."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        count = 1
        for d in filter(None, dims.split(",")):
            count *= int(d)
        total += _DTYPE_BYTES.get(dtype, 0) * count
    return total


def collective_bytes(hlo: str) -> int:
    """The operand bytes of every collective in a compiled program's text (one device's)."""
    defined, total = {}, 0
    for line in hlo.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, shape, op, operands = match.groups()
        defined[name] = shape_bytes(shape)
        if op.removesuffix("-start") in COLLECTIVES:
            total += sum(defined[o] for o in _OPERAND.findall(operands))
    return total


def compiled_step(num_members: int, layout: engine.Layout) -> jax.stages.Compiled:
    """tiny20k's train step for `num_members` on `layout`, with dropout and its recipe's
    augmentation (so the random numbers take part), compiled from shapes alone."""
    model = models.get("tiny20k")
    tx = optim.build(ml_collections.ConfigDict({"name": "adam", "learning_rate": 1e-3}),
                     steps_per_epoch=STEPS_PER_EPOCH, num_epochs=1)
    mesh = engine.layout_mesh(layout)
    step = engine.make_train_step(
        model, tx, mesh=mesh, augment_fn=augment.build(ml_collections.ConfigDict(
            {"rotation": 10.0, "shift": 0.1})), steps_per_epoch=STEPS_PER_EPOCH, batch_size=BATCH,
        label_smoothing=0.0, l1=0.0, l1_params="head/kernel", ema_decay=0.0, strategy=STRATEGY)
    keys = engine.member_keys(0, num_members)
    images = STEPS_PER_EPOCH * BATCH
    args = (jax.eval_shape(lambda: engine.init_members(model, tx, keys, jnp.zeros((1, *IMAGE_SHAPE)),
                                                       ema=False, mesh=mesh)),
            jax.eval_shape(lambda: engine.new_metrics(num_members)), jax.ShapeDtypeStruct((), jnp.int32),
            jax.ShapeDtypeStruct((images, *IMAGE_SHAPE), jnp.uint8),
            jax.ShapeDtypeStruct((images,), jnp.int32),
            jax.ShapeDtypeStruct((num_members, images), jnp.int32))
    with jax.threefry_partitionable(engine.partitionable_threefry(mesh)):  # as the engine runs it
        return step.__wrapped__.lower(*args).compile()


def flops(compiled: jax.stages.Compiled) -> float:
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", required=True, help="member counts, e.g. 1,15,35")
    args = parser.parse_args()
    cost = engine.member_cost(models.get("tiny20k"), IMAGE_SHAPE)
    report = {}
    for num_members in map(int, args.members.split(",")):
        common = {"data_parallel": True, "batch_sizes": (BATCH,)}
        rows = []
        for layout in engine.layouts(num_members, jax.device_count(), **common):
            compiled = compiled_step(num_members, layout)
            moved, work = collective_bytes(compiled.as_text()), flops(compiled)
            rows.append({"layout": layout, "collective_bytes": moved, "flops": work,
                         "compiled_cost": work + engine.FLOPS_PER_COLLECTIVE_BYTE * moved,
                         "estimated_cost": engine.layout_cost(layout, num_members, BATCH, cost, STRATEGY)})
        report[num_members] = {"rows": rows, "chosen": {
            "compiled": engine.mesh_shape(num_members, jax.device_count(), **common,
                                          costs={r["layout"]: r["compiled_cost"] for r in rows}),
            "estimated": engine.mesh_shape(num_members, jax.device_count(), **common,
                                           strategy=STRATEGY, member_cost=cost)}}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
