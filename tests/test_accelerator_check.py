"""experiments/accelerator_check.py: its small (CPU) mode end to end, and its parts."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "accelerator_check.py"


@pytest.fixture
def check(experiment):
    return experiment("accelerator_check")


@pytest.mark.slow
def test_small_mode_checks_resume_and_times_every_choice(mnist_dir, tmp_path):
    """The whole small mode in a subprocess (the script configures JAX itself, as a user runs it)."""
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--small", f"--out={out}", "--lower-for=cuda"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "accelerator_check.json").read_text())
    assert results["meta"]["mode"] == "small" and results["failures"] == []
    devices = results["devices"]
    assert devices["backend"] == "cpu" and len(devices["devices"]) == devices["local_count"] >= 1
    resume = results["resume"]
    assert resume["interrupted"] and resume["stopped_at_step"] > 0
    assert resume["bitwise"] and resume["max_abs_diff"] == 0.0 and resume["verdict"] == "ok"
    rows = results["throughput"]
    assert {(r["strategy"], r["members"], r["steps_per_call"], r["dtype"]) for r in rows} == {
        (s, m, k, d) for s in ("vmap", "unroll") for m in (1, 2) for k in (1, 2)
        for d in ("float32", "bfloat16")}
    for r in rows:
        assert r["images_per_s"] > 0 and r["per_member_images_per_s"] == r["images_per_s"] / r["members"]
        # Above 0; not capped at 1: on the CPU the peak is XLA's own matmul, which oneDNN's
        # convolutions can outrun on some CPUs.
        assert r["share_of_peak"] > 0, r
    assert results["torch"].startswith("not measured")
    assert results["lowered"]["cuda"]["onednn"] == []
    table = (out / "accelerator_check.md").read_text()
    assert "| tiny20k | bfloat16 | vmap | 2 | 2 |" in table and "Resume: OK" in proc.stdout


def test_lowered_for_cuda_holds_no_onednn_call(check):
    lowered = check.lowered(["cuda"])
    assert set(lowered["cuda"]["by_config"]) == {"quick", "deotte15"}
    assert not [c for c in lowered["cuda"]["custom_calls"] if c.startswith("mnist_onednn_")]
    assert lowered["cuda"]["onednn"] == []


def test_failures_are_listed_and_the_table_truncates(check):
    results = {
        "meta": {"date": "2026-12-06", "mode": "full"},
        "devices": {"description": "1 x H100", "jax": "0.10.2", "conv_backend": "xla",
                    "tf32": {"applies": True}},
        "resume": {"verdict": "not interrupted", "reason": "the run finished before the signal"},
        "throughput": [{"model": "deotte", "dtype": "bfloat16", "strategy": "vmap", "members": 64,
                        "steps_per_call": 16, "images_per_s": 9999.99, "per_member_images_per_s": 156.249,
                        "share_of_peak": 0.129999}],
        "lowered": {"cuda": {"custom_calls": ["mnist_onednn_conv_fwd"], "onednn": ["mnist_onednn_conv_fwd"]}},
    }
    assert check.failures(results) == [
        "resume: FAIL (the run finished before the signal)",
        "lowered for cuda: oneDNN custom calls ['mnist_onednn_conv_fwd']"]
    table = check.markdown(results)
    assert "| deotte | bfloat16 | vmap | 64 | 16 | 9,999 | 156 | 12.99 % |" in table
    assert "| cuda | mnist_onednn_conv_fwd | FAIL: mnist_onednn_conv_fwd |" in table


@pytest.mark.parametrize("argv, message", [
    (["--models=resnet9"], "unknown model"),
    (["--members=0"], "expected positive ints"),
    (["--steps-per-call=500"], "exceed the 60000 images"),
    (["--lower-for=metal"], "cannot lower for ['metal']"),
    (["--reproduce=deotte15:members=0", "--budget-minutes=1"], "bad --reproduce field"),
    (["--reproduce=deotte15"], "--reproduce needs --budget-minutes"),
])
def test_bad_input_ends_in_one_line(check, capsys, tmp_path, argv, message):
    with pytest.raises(SystemExit):
        check.parse_args([*argv, f"--out={tmp_path}"])
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_unwritable_out_ends_in_one_line(check, capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit):
        check.parse_args([f"--out={blocker / 'check'}"])
    assert f"--out {blocker / 'check'}: cannot write there" in capsys.readouterr().err


def test_pytorch_is_timed_beside_jax_on_the_cpu(check):
    pytest.importorskip("torch", reason="the PyTorch side needs the optional `bench` extra")
    mode = dataclasses.replace(check.MODES["small"], steps=2, repeats=1, warmup=0)
    torch = check.torch_comparison([("tiny20k", {})], "cpu", mode)
    assert [r["dtype"] for r in torch["rows"]] == ["float32", "bfloat16"]
    assert all(r["jax_images_per_s"] > 0 and r["torch_images_per_s"] > 0 for r in torch["rows"])
