"""mnist_jax.optim: schedules against their published formulas, and what the optimisers actually do."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mnist_jax import optim


def config(**overrides) -> ml_collections.ConfigDict:
    cfg = optim.default_config()
    cfg.update(overrides)
    return cfg


def values_at(cfg, steps, *, steps_per_epoch, num_epochs, key="learning_rate") -> np.ndarray:
    schedule = optim.make_schedules(cfg, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs)[key]
    return np.array([float(schedule(s)) for s in steps])


# PyTorch OneCycleLR (three_phase=False), transcribed from torch/optim/lr_scheduler.py.
def torch_cos(start, end, pct):
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def torch_linear(start, end, pct):
    return (end - start) * pct + start


def torch_one_cycle(step, total_steps, pct_start, start, peak, end, anneal):
    phases = [(float(pct_start * total_steps) - 1, start, peak), (total_steps - 1, peak, end)]
    start_step = 0
    for i, (end_step, a, b) in enumerate(phases):
        if step <= end_step or i == len(phases) - 1:
            return anneal(a, b, (step - start_step) / (end_step - start_step))
        start_step = end_step


@pytest.mark.parametrize("anneal, formula", [("cos", torch_cos), ("linear", torch_linear)])
def test_one_cycle_matches_pytorch(anneal, formula):
    # tiny20k: max 0.003, 20 % warm-up, div 10, final div 100, 19 epochs (of 5 steps here).
    cfg = config(learning_rate=3e-3, schedule=dict(
        name="one_cycle", pct_start=0.2, div_factor=10.0, final_div_factor=100.0, anneal=anneal))
    total, peak_step = 95, 0.2 * 95 - 1  # peak at step 18
    steps = [0, 7, 18, 40, 56.5, 94]
    got = values_at(cfg, steps, steps_per_epoch=5, num_epochs=19)
    expected = [torch_one_cycle(s, total, 0.2, 3e-4, 3e-3, 3e-6, formula) for s in steps]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Start, peak and end: max/div, max, max/(div*final_div).
    np.testing.assert_allclose(got[[0, 2, 5]], [3e-4, 3e-3, 3e-6], rtol=1e-5)
    # The middle of each phase is the mean of its ends for both anneals.
    mid_up, mid_down = values_at(cfg, [peak_step / 2, (peak_step + total - 1) / 2], steps_per_epoch=5, num_epochs=19)
    np.testing.assert_allclose([mid_up, mid_down], [(3e-4 + 3e-3) / 2, (3e-3 + 3e-6) / 2], rtol=1e-5)
    quarter_up = {"cos": 3e-3 + (3e-4 - 3e-3) / 2 * (math.cos(math.pi * 7 / 18) + 1),
                  "linear": 3e-4 + (3e-3 - 3e-4) * 7 / 18}[anneal]
    np.testing.assert_allclose(got[1], quarter_up, rtol=1e-5)


def test_one_cycle_momentum_moves_inversely_to_lr():
    cfg = config(schedule=dict(name="one_cycle", cycle_momentum=True))  # resnet_committee
    steps = np.arange(100)
    lr = values_at(cfg, steps, steps_per_epoch=10, num_epochs=10)
    b1 = values_at(cfg, steps, steps_per_epoch=10, num_epochs=10, key="b1")
    np.testing.assert_allclose(b1[[0, 24, 99]], [0.95, 0.85, 0.95], rtol=1e-6)
    np.testing.assert_allclose(b1, [torch_one_cycle(s, 100, 0.25, 0.95, 0.85, 0.95, torch_cos) for s in steps],
                               rtol=1e-5)
    assert np.all(np.diff(lr) * np.diff(b1) <= 0)
    assert np.argmax(lr) == np.argmin(b1) == 24


def test_one_cycle_warmup_shorter_than_a_step_starts_at_peak():
    # config.validate builds with steps_per_epoch=1, where 0.25 * 2 steps is no warm-up at all.
    cfg = config(learning_rate=0.1, schedule=dict(name="one_cycle", anneal="linear"))
    np.testing.assert_allclose(values_at(cfg, [0, 1, 5], steps_per_epoch=1, num_epochs=2),
                               [0.1, 0.1 / 25 / 1e4, 0.1 / 25 / 1e4], rtol=1e-5)


def test_sgd_cycles_momentum_under_its_own_name():
    cfg = config(name="sgd", schedule=dict(name="one_cycle", cycle_momentum=True))
    assert set(optim.make_schedules(cfg, steps_per_epoch=10, num_epochs=10)) == {"learning_rate", "momentum"}
    state = optim.build(cfg, steps_per_epoch=10, num_epochs=10).init({"w": jnp.zeros(2)})
    np.testing.assert_allclose(state.hyperparams["momentum"], 0.95, rtol=1e-6)


def test_piecewise_senet_recipe_switches_at_epoch_boundaries():
    cfg = config(schedule={"name": "piecewise", "boundaries": [13, 16], "values": [1e-3, 1e-4, 1e-5]})
    got = values_at(cfg, [0, 64, 65, 79, 80, 99], steps_per_epoch=5, num_epochs=20)
    np.testing.assert_allclose(got, [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5], rtol=1e-6)


@pytest.mark.parametrize("rate", [0.95, 0.98])  # deotte15, simple_m*
def test_exponential_decays_once_per_epoch(rate):
    steps = np.arange(30)
    got = values_at(config(schedule=dict(name="exponential", decay_rate=rate)), steps, steps_per_epoch=7, num_epochs=5)
    np.testing.assert_allclose(got, [1e-3 * rate ** (s // 7) for s in steps], rtol=1e-5)
    assert got[6] == got[0] and got[7] < got[6]


def test_warmup_cosine_rises_linearly_then_decays_to_zero():
    cfg = config(learning_rate=0.1, schedule=dict(name="warmup_cosine", warmup_epochs=2.0))
    got = values_at(cfg, [0, 5, 10, 55, 100], steps_per_epoch=5, num_epochs=20)
    np.testing.assert_allclose(got, [0.0, 0.05, 0.1, 0.05 * (1 + math.cos(math.pi * 45 / 90)), 0.0], atol=1e-7)


def test_current_learning_rate_is_the_rate_the_update_used():
    # Plain SGD: the update is exactly -lr * grad, so the step size reveals the rate used.
    cfg = config(name="sgd", momentum=0.0, learning_rate=0.5, schedule=dict(name="one_cycle", pct_start=0.5))
    tx = optim.build(cfg, steps_per_epoch=2, num_epochs=3)
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    np.testing.assert_allclose(optim.current_learning_rate(state), 0.5 / 25, rtol=1e-6)
    update = jax.jit(tx.update)
    used = []
    for _ in range(6):
        updates, state = update({"w": jnp.ones(3)}, state, params)
        used.append(float(optim.current_learning_rate(state)))
        np.testing.assert_allclose(-updates["w"], used[-1], rtol=1e-6)
    assert used[2] == max(used) and used[-1] < 1e-5  # Peak at step 2, ends at max/(div*final_div).


def test_current_learning_rate_refuses_foreign_state():
    with pytest.raises(ValueError, match="optim.build"):
        optim.current_learning_rate(optax.adam(1e-3).init({"w": jnp.zeros(2)}))


@pytest.mark.parametrize("name, reference", [
    ("adam", lambda: optax.adam(1e-2, eps=1e-7)),
    ("nadam", lambda: optax.nadam(1e-2, eps=1e-7)),
    ("adamw", lambda: optax.adamw(1e-2, eps=1e-7, weight_decay=0.1)),
    ("sgd", lambda: optax.sgd(1e-2, momentum=0.9, nesterov=True)),
])
def test_constant_schedule_matches_optax_reference(name, reference):
    cfg = config(name=name, learning_rate=1e-2, nesterov=True, weight_decay=0.1 if name == "adamw" else 0.0)
    ours, ref = optim.build(cfg, steps_per_epoch=3, num_epochs=1), reference()
    params = {"w": jnp.array([1.0, -2.0])}
    ours_state, ref_state = ours.init(params), ref.init(params)
    for grad in ([0.3, -1.0], [0.1, 2.0], [-0.5, 0.5]):
        grads = {"w": jnp.array(grad)}
        ours_updates, ours_state = ours.update(grads, ours_state, params)
        ref_updates, ref_state = ref.update(grads, ref_state, params)
        np.testing.assert_allclose(ours_updates["w"], ref_updates["w"], rtol=1e-5)


def test_vmap_over_members_equals_separate_runs():
    cfg = config(name="adamw", weight_decay=1e-2, grad_clip=1.0, schedule=dict(name="one_cycle", cycle_momentum=True))
    tx = optim.build(cfg, steps_per_epoch=4, num_epochs=2)
    members = 3
    params = {"w": jnp.arange(members * 4, dtype=jnp.float32).reshape(members, 4) / 10,
              "b": jnp.linspace(-1.0, 1.0, members)}
    grads = [jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 1)) * 3, params) for i in range(4)]

    def run(params, grads_seq, init, update):
        state = init(params)
        for g in grads_seq:
            updates, state = update(g, state, params)
            params = optax.apply_updates(params, updates)
        return params, state

    batched, batched_state = run(params, grads, jax.vmap(tx.init), jax.jit(jax.vmap(tx.update)))
    for m in range(members):
        def take(tree, m=m):
            return jax.tree.map(lambda x: x[m], tree)

        single, single_state = run(take(params), [take(g) for g in grads], tx.init, jax.jit(tx.update))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), take(batched), single)
        np.testing.assert_allclose(optim.current_learning_rate(batched_state)[m],
                                   optim.current_learning_rate(single_state), rtol=1e-6)


def test_decoupled_weight_decay_shrinks_params_by_lr_times_wd():
    # Zero loss gradient: Adam's step is 0, so only the decoupled decay p *= 1 - lr * wd acts.
    tx = optim.build(config(name="adamw", learning_rate=0.1, weight_decay=0.5), steps_per_epoch=1, num_epochs=1)
    params = {"w": jnp.array([2.0, -4.0])}
    updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
    np.testing.assert_allclose(optax.apply_updates(params, updates)["w"], [2.0 * 0.95, -4.0 * 0.95], rtol=1e-6)


def test_coupled_weight_decay_goes_through_adam_normalisation():
    # torch Adam(weight_decay): grad += wd * p, so the first step is -lr * sign(p), not -lr * wd * p.
    tx = optim.build(config(name="adam", learning_rate=0.1, weight_decay=0.5), steps_per_epoch=1, num_epochs=1)
    params = {"w": jnp.array([2.0, -4.0])}
    updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.1, 0.1], rtol=1e-5)


def test_coupled_weight_decay_shifts_quadratic_minimum():
    # Minimising 0.5 * (p - t)^2 with L2 decay wd lands at t / (1 + wd), not at t.
    target, wd = jnp.array([1.0, -3.0]), 0.25
    cfg = config(name="sgd", learning_rate=0.3, momentum=0.5, weight_decay=wd)
    tx = optim.build(cfg, steps_per_epoch=1, num_epochs=1)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: 0.5 * jnp.sum((p["w"] - target) ** 2))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    for _ in range(200):
        params, state = step(params, state)
    np.testing.assert_allclose(params["w"], target / (1 + wd), rtol=1e-4)


def test_grad_clip_caps_global_norm_and_keeps_direction():
    tx = optim.build(config(name="sgd", momentum=0.0, learning_rate=1.0, grad_clip=1.0),
                     steps_per_epoch=1, num_epochs=1)
    params = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
    state = tx.init(params)
    big = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([4.0])}  # global norm 5 across both leaves
    updates, state = tx.update(big, state, params)
    np.testing.assert_allclose(np.concatenate([updates["a"], updates["b"]]), [-0.6, 0.0, -0.8], rtol=1e-6)
    small = {"a": jnp.array([0.3, 0.0]), "b": jnp.array([0.4])}  # norm 0.5: left alone
    updates, _ = tx.update(small, state, params)
    np.testing.assert_allclose(np.concatenate([updates["a"], updates["b"]]), [-0.3, 0.0, -0.4], rtol=1e-6)


@pytest.mark.parametrize("overrides", [
    dict(schedule={"name": "piecewise", "boundaries": [13, 16], "values": [1e-3, 1e-4, 1e-5]}),  # senet
    dict(schedule={"name": "exponential", "decay_rate": 0.95}),  # deotte15
    dict(name="adamw", weight_decay=1e-4, learning_rate=3e-3, schedule={  # tiny20k
        "name": "one_cycle", "pct_start": 0.2, "div_factor": 10.0, "final_div_factor": 100.0}),
    dict(schedule={"name": "one_cycle", "cycle_momentum": True}),  # resnet_committee
    dict(name="nadam"),  # baseline
])
def test_recipes_build_from_frozen_config(overrides):
    cfg = ml_collections.FrozenConfigDict(config(**overrides))  # lists arrive as tuples here
    tx = optim.build(cfg, steps_per_epoch=3, num_epochs=20)
    params = {"w": jnp.ones(2)}
    updates, state = jax.jit(tx.update)({"w": jnp.ones(2)}, tx.init(params), params)
    assert np.all(np.isfinite(updates["w"])) and np.all(updates["w"] < 0)
    assert optim.current_learning_rate(state) > 0


@pytest.mark.parametrize("overrides, message", [
    (dict(name="adm"), r"unknown optimiser optim.name='adm'; valid choices: \['adam', 'adamw', 'nadam', 'sgd'\]"),
    (dict(schedule=dict(name="cosine")), r"valid choices: \['constant', 'piecewise', 'one_cycle'"),
    (dict(lr=1e-3), r"unknown optim field\(s\) \['lr'\]; valid fields: \['b1', 'b2'"),
    (dict(schedule=dict(warmup=1)), r"unknown optim.schedule field\(s\) \['warmup'\]; valid fields"),
    (dict(schedule="one_cycle"), r"optim.schedule must be a dict of schedule fields"),
    (dict(learning_rate=0.0), r"optim.learning_rate must be a number > 0.0, got 0.0"),
    (dict(learning_rate=-1e-3), r"optim.learning_rate must be a number > 0.0, got -0.001"),
    (dict(learning_rate="fast"), r"bad optim config: Could not override field 'learning_rate'"),
    (dict(b1=1.0), r"optim.b1 must be a number in \[0.0, 1.0\), got 1.0"),
    (dict(grad_clip=-1.0), r"optim.grad_clip must be a number >= 0.0, got -1.0"),
    (dict(schedule=dict(name="piecewise", boundaries=[13, 16], values=[1e-3, 1e-4])),
     r"values needs len\(boundaries\) \+ 1 = 3 learning rates, got 2"),
    (dict(schedule=dict(name="piecewise", boundaries=[16, 13], values=[1e-3, 1e-4, 1e-5])),
     r"boundaries must be strictly increasing positive epochs, got \[16, 13\]"),
    (dict(schedule=dict(name="piecewise", boundaries=[13, 25], values=[1e-3, 1e-4, 1e-5])),
     r"boundaries must not exceed num_epochs=20, got \[13, 25\]"),
    (dict(schedule=dict(name="piecewise", boundaries=[13], values=[1e-3, -1e-4])),
     r"values must all be positive learning rates"),
    (dict(schedule=dict(name="one_cycle", anneal="exp")), r"anneal='exp'; valid choices: \['cos', 'linear'\]"),
    (dict(schedule=dict(name="one_cycle", pct_start=1.0)), r"pct_start must be a number in \(0.0, 1.0\), got 1.0"),
    (dict(schedule=dict(cycle_momentum=True)), r"cycle_momentum=True needs optim.schedule.name='one_cycle'"),
    (dict(schedule=dict(name="exponential", decay_rate=0.0)), r"decay_rate must be a number > 0.0, got 0.0"),
    (dict(schedule=dict(name="warmup_cosine", warmup_epochs=20.0)), r"warmup_epochs must be a number in \[0.0, 20\)"),
])
def test_bad_config_is_refused_with_one_line_message(overrides, message):
    with pytest.raises(ValueError, match=message) as info:
        optim.build(overrides, steps_per_epoch=3, num_epochs=20)
    assert "\n" not in str(info.value)


def test_bad_step_counts_are_refused():
    with pytest.raises(ValueError, match="steps_per_epoch must be a positive int, got 0"):
        optim.make_schedules(optim.default_config(), steps_per_epoch=0, num_epochs=1)
