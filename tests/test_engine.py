"""The ensemble engine on synthetic data: members are independent, strategies agree, bags differ."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import augment, engine, models, optim
from mnist_jax.config import base_config

BATCH, STEPS_PER_EPOCH, POOL = 16, 4, 256


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (POOL, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, POOL).astype(np.int32)
    return images, labels


def train(data, seed, num_members, strategy, steps=3, with_augment=True, ema_decay=0.9,
          steps_per_call=1):
    """Params of `num_members` tiny20k members after `steps` engine steps, `steps_per_call` a call."""
    images, labels = data
    cfg = base_config()
    cfg.augment.rotation = 10.0
    # SGD, not Adam: Adam's first steps are ~lr * sign(grad), which turns float rounding in a
    # near-zero gradient into a full-size step and would hide real differences in noise.
    cfg.optim.name = "sgd"
    cfg.optim.learning_rate = 0.05
    model = models.get("tiny20k")
    tx = optim.build(cfg.optim, steps_per_epoch=STEPS_PER_EPOCH, num_epochs=1)
    mesh = engine.make_mesh(num_members, jax.devices()[:1])
    keys = engine.member_keys(seed, num_members)
    state = engine.init_members(model, tx, keys, jnp.zeros((1, 28, 28, 1)), ema=True, mesh=mesh)
    metrics = engine.new_metrics(num_members)
    order = engine.epoch_order(keys, engine.member_bags(keys, POOL, POOL), 0, STEPS_PER_EPOCH, BATCH)
    step_fn = engine.make_train_step(
        model, tx, mesh=mesh, augment_fn=augment.build(cfg.augment) if with_augment else None,
        steps_per_epoch=STEPS_PER_EPOCH, batch_size=BATCH, label_smoothing=0.1, l1=1e-4,
        l1_params="head/kernel", ema_decay=ema_decay, strategy=strategy,
        steps_per_call=steps_per_call)
    images, labels = engine.put_replicated(images, mesh), engine.put_replicated(labels, mesh)
    step = jnp.int32(0)
    for _ in range(steps // steps_per_call):
        state, metrics, step = step_fn(state, metrics, step, images, labels, order)
    return jax.tree.map(np.asarray, state), jax.tree.map(np.asarray, metrics)


def member(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    flat_a, flat_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(flat_a) == len(flat_b)
    for x, y in zip(flat_a, flat_b):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


# vmap: 2 members' convolutions run as one grouped conv, 1 member's as a plain one; their
# float32 tolerance holds on the CPU, not under TF32 (GPU) or bfloat16 passes (TPU).
@pytest.mark.parametrize("strategy", ["unroll", pytest.param("vmap", marks=pytest.mark.cpu_only)])
def test_members_trained_together_equal_members_trained_alone(data, strategy):
    together, _ = train(data, seed=5, num_members=2, strategy=strategy)
    alone, _ = train(data, seed=6, num_members=1, strategy=strategy)
    assert_trees_close(member(together["params"], 1), member(alone["params"], 0))
    assert_trees_close(member(together["ema_params"], 1), member(alone["ema_params"], 0))
    assert_trees_close(member(together["batch_stats"], 1), member(alone["batch_stats"], 0))


def test_several_steps_per_call_equal_one_step_per_call(data):
    """A device loop of 4 steps (nothing uploaded from the host between them) trains as 4 calls."""
    looped, looped_metrics = train(data, seed=1, num_members=2, strategy="vmap", steps=4, steps_per_call=4)
    single, single_metrics = train(data, seed=1, num_members=2, strategy="vmap", steps=4)
    assert_trees_close(looped, single)
    np.testing.assert_array_equal(looped_metrics["count"], single_metrics["count"])


def test_ema_follows_the_weights_from_the_first_steps(data):
    """With a long-horizon decay the average still tracks the trained weights after a few steps
    (warm-up), instead of staying at the initial ones that the BatchNorm statistics don't fit."""
    init, _ = train(data, seed=0, num_members=1, strategy="unroll", steps=0, ema_decay=0.999)
    trained, _ = train(data, seed=0, num_members=1, strategy="unroll", steps=3, ema_decay=0.999)
    def distance(a, b):
        return np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))
    to_weights = distance(trained["ema_params"], trained["params"])
    to_init = distance(trained["ema_params"], init["params"])
    assert to_weights < 0.5 * to_init


@pytest.mark.cpu_only  # grouped against plain convolutions, to float32 rounding
def test_strategies_compute_the_same_numbers(data):
    """After 3 Adam steps, within 2e-4 (the learning rate is 1e-3): vmap runs each conv as one
    grouped conv and sums in another order, and Adam's m / sqrt(v) turns the rounding of
    near-zero gradient entries into steps of up to the learning rate's size. The gradients
    themselves agree to float32 rounding (next test)."""
    unrolled, m_unrolled = train(data, seed=0, num_members=2, strategy="unroll")
    vmapped, m_vmapped = train(data, seed=0, num_members=2, strategy="vmap")
    assert_trees_close(unrolled["params"], vmapped["params"], rtol=1e-4, atol=2e-4)
    np.testing.assert_array_equal(m_unrolled["correct"], m_vmapped["correct"])


@pytest.mark.cpu_only  # grouped against plain convolutions, to float32 rounding
def test_vmapped_gradients_equal_per_member_gradients():
    model = models.get("tiny20k", dropout_rate=0.0)
    x = jax.random.uniform(jax.random.key(0), (2, 64, 28, 28, 1))
    y = jax.random.randint(jax.random.key(1), (2, 64), 0, 10)
    members = [model.init(jax.random.key(i), x[0, :1], train=False) for i in range(2)]

    def loss(variables, x, y):
        logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(y.shape[0]), y])

    vmapped = jax.jit(jax.vmap(jax.grad(loss)))(jax.tree.map(lambda *a: jnp.stack(a), *members), x, y)
    for i, variables in enumerate(members):
        alone = jax.jit(jax.grad(loss))(variables, x[i], y[i])
        # Rounding is judged against the member's largest gradient, not each leaf's own: a conv
        # bias followed by training-mode BatchNorm has an exactly-zero gradient, so its computed
        # value is pure rounding noise (~1e-7 here) that a per-leaf scale would call a mismatch.
        scale = max(float(np.abs(leaf).max()) for leaf in jax.tree.leaves(alone))
        for got, want in zip(jax.tree.leaves(member(vmapped, i)), jax.tree.leaves(alone)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


def test_members_with_different_seeds_differ(data):
    state, metrics = train(data, seed=0, num_members=2, strategy="unroll")
    a, b = member(state["params"], 0), member(state["params"], 1)
    assert any(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert metrics["count"].tolist() == [3 * BATCH, 3 * BATCH]
    assert (metrics["first_bad_step"] == -1).all()


def test_training_moves_parameters_and_lowers_loss_on_a_fixed_batch():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (BATCH, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, BATCH).astype(np.int32)
    cfg = base_config()
    model = models.get("tiny20k", dropout_rate=0.0)
    tx = optim.build(cfg.optim, steps_per_epoch=1, num_epochs=1)
    mesh = engine.make_mesh(1)
    keys = engine.member_keys(0, 1)
    state = engine.init_members(model, tx, keys, jnp.zeros((1, 28, 28, 1)), ema=False, mesh=mesh)
    order = jnp.arange(BATCH, dtype=jnp.int32)[None]
    step_fn = engine.make_train_step(model, tx, mesh=mesh, augment_fn=None, steps_per_epoch=1,
                                     batch_size=BATCH, label_smoothing=0.0, l1=0.0, l1_params="x",
                                     ema_decay=0.0, strategy="unroll")
    losses = []
    for step in range(30):
        metrics = engine.new_metrics(1)
        state, metrics, _ = step_fn(state, metrics, jnp.int32(step), jnp.asarray(images),
                                    jnp.asarray(labels), order)
        losses.append(float(metrics["loss_sum"][0]))
    assert losses[-1] < 0.5 * losses[0]


def test_bags_are_per_member_subsets_and_orders_are_permutations():
    keys = engine.member_keys(0, 3)
    bags = np.asarray(engine.member_bags(keys, 100, 90))
    assert bags.shape == (3, 90)
    for bag in bags:
        assert len(set(bag.tolist())) == 90 and bag.min() >= 0 and bag.max() < 100
    assert not np.array_equal(np.sort(bags[0]), np.sort(bags[1]))
    order = np.asarray(engine.epoch_order(keys, jnp.asarray(bags), 0, 2, 40))
    assert order.shape == (3, 80)
    for o, bag in zip(order, bags):
        assert set(o.tolist()) <= set(bag.tolist()) and len(set(o.tolist())) == 80
    again = np.asarray(engine.epoch_order(keys, jnp.asarray(bags), 0, 2, 40))
    next_epoch = np.asarray(engine.epoch_order(keys, jnp.asarray(bags), 1, 2, 40))
    np.testing.assert_array_equal(order, again)
    assert not np.array_equal(order, next_epoch)
    full = np.asarray(engine.member_bags(keys, 100, 100))
    np.testing.assert_array_equal(full, np.broadcast_to(np.arange(100), (3, 100)))



def one_step_params(data, layout, partitionable=None):
    """Params of one tiny20k member after one step with dropout and augmentation on the mesh of
    `layout`: drawn as the engine draws (`partitionable` None), or with the threefry named."""
    images, labels = data
    cfg = base_config()
    cfg.augment.rotation = 10.0
    model = models.get("tiny20k")
    tx = optim.build(cfg.optim, steps_per_epoch=1, num_epochs=1)
    mesh = engine.layout_mesh(layout)
    keys = engine.member_keys(0, 1)
    state = engine.init_members(model, tx, keys, jnp.zeros((1, 28, 28, 1)), ema=False, mesh=mesh)
    step_fn = engine.make_train_step(
        model, tx, mesh=mesh, augment_fn=augment.build(cfg.augment), steps_per_epoch=1,
        batch_size=BATCH, label_smoothing=0.0, l1=0.0, l1_params="x", ema_decay=0.0, strategy="unroll")
    args = (state, engine.new_metrics(1), jnp.int32(0), engine.put_replicated(images, mesh),
            engine.put_replicated(labels, mesh), jnp.arange(BATCH, dtype=jnp.int32)[None])
    if partitionable is None:
        return jax.tree.map(np.asarray, step_fn(*args)[0]["params"])
    with jax.threefry_partitionable(partitionable):
        return jax.tree.map(np.asarray, step_fn.__wrapped__(*args)[0]["params"])


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("layout", [(1, 1), (1, 2)])
def test_a_member_on_one_device_keeps_the_classic_random_numbers(data, layout):
    """A member on one device draws dropout and augmentation with the classic threefry, bitwise
    as before; one whose batch spans devices (a data axis) with the partitionable one, so each
    device draws only its share. The two threefries give different numbers, so each comparison
    could fail."""
    if layout[1] > jax.device_count():
        pytest.skip(f"needs {layout[1]} devices")
    partitionable = layout[1] > 1
    engine_params = one_step_params(data, layout)
    assert_trees_equal(engine_params, one_step_params(data, layout, partitionable))
    other = one_step_params(data, layout, not partitionable)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(engine_params), jax.tree.leaves(other)))
