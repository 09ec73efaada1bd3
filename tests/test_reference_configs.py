"""Every reference config: valid as shipped, and its own recipe trains, checkpoints and resumes.

Apart from test_train.py so that pytest-xdist's `--dist loadfile` can give the two halves to
different workers: together they were the suite's longest file.
"""

import pytest

from mnist_jax import run as run_lib, train
from train_helpers import StopAfter, final_state, load_config


@pytest.mark.parametrize("name,arg", [("quick", None), ("cpu_fast", None), ("cpu_fast_first", None), ("tiny20k", None),
                                      ("senet_ensemble", None),
                                      ("deotte15", None), ("resnet_committee", None),
                                      ("baseline", None), ("simple", "m3"), ("simple", "m5"),
                                      ("simple", "m7")])
def test_every_reference_config_is_valid(name, arg):
    run_lib.validate(load_config(name, arg))


REFERENCE_CONFIGS = [("senet_ensemble", None), ("deotte15", None), ("tiny20k", None),
                     ("resnet_committee", None), ("baseline", None), ("simple", "m3"),
                     ("simple", "m5"), ("simple", "m7")]


@pytest.mark.slow
@pytest.mark.parametrize("name,arg", REFERENCE_CONFIGS)
def test_every_reference_config_trains_checkpoints_and_resumes(name, arg, mnist_dir, tmp_path,
                                                               monkeypatch):
    config = load_config(name, arg)
    config.num_members = 2  # the recipe's own members, epochs and schedule; only fewer of them
    config.train_subset = config.batch_size * 8
    config.validation_size = 100
    config.log_every_steps = 1
    if config.bagging:
        config.train_subset = int(config.batch_size * 8 / config.bagging) + 1
    for attempt in (1, 2):
        # The first look stops the run; it is read after the next step is dispatched: two steps.
        monkeypatch.setattr(train, "_StopSignal", lambda: StopAfter(0))
        with pytest.raises(train.Interrupted, match=f"at step {2 * attempt}"):
            train.train_and_evaluate(config, tmp_path)
        _, step = final_state(tmp_path, config)
        assert step == 2 * attempt  # the second run resumed from the first one's step
