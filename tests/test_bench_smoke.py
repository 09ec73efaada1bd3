"""Smoke tests of experiments/bench_throughput.py: tiny settings, no timing assertions."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import pytest

TINY = ["--models", "tiny20k", "--batches", "8", "--repeats", "1", "--steps", "2", "--warmup", "0",
        "--scaling-batch", "8"]


@pytest.fixture
def bench(experiment):
    return experiment("bench_throughput")


def test_jax_side_writes_json(bench, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    bench.main([*TINY, "--members", "1", "--augment-models", "tiny20k", "--sweep-members", "2",
                "--no-torch", "--out", str(out)])
    results = json.loads(out.read_text())
    (row,) = results["comparison"]
    assert (row["model"], row["params"], row["batch"]) == ("tiny20k", 15578, 8)
    assert row["jax_images_per_s"] > 0 and row["torch_images_per_s"] is None
    (scaled,) = results["scaling"]
    assert (scaled["members"], scaled["efficiency"]) == (1, 1.0)
    (share,) = results["input_share"]
    assert share["augment"] == {"rotation": 10.0, "shift": 0.1}
    assert share["batching_share"] == pytest.approx(share["batching_ms"] / share["step_ms"])
    (sweep,) = results["sweep_cost"]
    assert (sweep["model"], sweep["members"]) == ("tiny20k", 2) and sweep["swept_images_per_s"] > 0
    assert sweep["ratio_swept_over_plain"] == pytest.approx(
        sweep["swept_images_per_s"] / sweep["plain_images_per_s"])


def test_torch_side_matches_and_is_timed(bench, tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the PyTorch side needs the optional `bench` extra")
    out = tmp_path / "bench.json"
    results = bench.main([*TINY, "--scaling-models", "", "--augment-models", "", "--out", str(out)])
    (row,) = results["comparison"]
    assert row["torch_images_per_s"] > 0
    assert row["ratio_jax_over_torch"] == pytest.approx(row["jax_images_per_s"] / row["torch_images_per_s"])
    assert json.loads(out.read_text())["meta"]["torch_threads"] == 2


def test_bfloat16_runs_both_sides_in_bfloat16(bench, tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the PyTorch side needs the optional `bench` extra")
    results = bench.main([*TINY, "--dtype", "bfloat16", "--scaling-models", "", "--augment-models",
                          "", "--out", str(tmp_path / "bench.json")])
    assert results["meta"]["dtype"] == "bfloat16"
    (row,) = results["comparison"]
    assert row["jax_images_per_s"] > 0 and row["torch_images_per_s"] > 0
    model = bench._initial_state("tiny20k", bench._model_fields(("tiny20k", {}), "bfloat16"), 1)[0]
    assert model.dtype == jnp.bfloat16


@pytest.mark.parametrize("spec", ["senet:filters=32", "resnet_committee:width=32", "deotte"])
def test_torch_peer_has_the_flax_parameter_count(bench, spec: str) -> None:
    torch_peer = pytest.importorskip("torch_peer", reason="the PyTorch peers need torch")
    name, overrides = bench.parse_spec(spec)
    assert torch_peer.count_params(torch_peer.get(name, **overrides)) == bench.param_count((name, overrides))


@pytest.mark.parametrize("argv, message", [
    (["--models", "senet:width=32"], "has no field 'width'"),
    (["--models", "senet:filters"], "write name[:field=int...]"),
    (["--batches", "0"], "expected positive ints"),
    (["--augment-models", "deotte"], "no recipe augmentation"),
    (["--steps", "1000"], "lower --steps"),
    (["--table", "no_such.json"], "--table no_such.json: not a readable JSON"),
    (["--table", __file__], "not a readable JSON"),
])
def test_bad_flags_fail_with_one_line(bench, capsys, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args([*argv, "--no-torch"])
    assert message in capsys.readouterr().err


def test_tables_truncate_and_never_round_up(bench, tmp_path: Path, capsys) -> None:
    results = {"comparison": [{"model": "deotte", "params": 326410, "batch": 128,
                               "jax_images_per_s": 503.94, "torch_images_per_s": 504.96,
                               "ratio_jax_over_torch": 0.998, "torch_channels_last": None}],
               "scaling": [{"model": "tiny20k", "batch": 128, "members": 4, "images_per_s": 9295.9,
                            "per_member_images_per_s": 2323.99, "efficiency": 1.5399}],
               "input_share": []}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(results))
    assert bench.main(["--table", str(path)]) == results
    printed = capsys.readouterr().out
    assert "| deotte | 326,410 | 128 | 503 | 504 | 0.99 | - |" in printed
    assert "| tiny20k | 128 | 4 | 9,295 | 2,323 | 1.53 |" in printed
