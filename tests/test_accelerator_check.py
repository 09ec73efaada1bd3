"""experiments/accelerator_check.py: its small (CPU) mode end to end, and its parts."""

from __future__ import annotations

import dataclasses
import json
import os
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
@pytest.mark.cpu_only  # the backend is 'cpu', and the resume is bitwise
def test_small_mode_checks_resume_and_times_every_strategy_and_dtype(mnist_dir, tmp_path):
    """Small mode in a subprocess (the script configures JAX itself, as a user runs it), its grid
    cut to 2 members and 2 steps a call: the whole grid doubles the test's time for nothing new."""
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--small", f"--out={out}", "--lower-for=cuda",
                           "--members=2", "--steps-per-call=2"],
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
        (s, 2, 2, d) for s in ("vmap", "unroll") for d in ("float32", "bfloat16")}
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


@pytest.mark.slow
def test_minutes_bound_the_check_and_what_did_not_fit_is_listed(mnist_dir, tmp_path):
    """`--minutes=1`, the resume check included: the check ends within 1.25 minutes of its start,
    and each throughput program of small mode was timed or is listed as skipped, with why, in the
    JSON and in what it prints."""
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--small", "--minutes=1", f"--out={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "accelerator_check.json").read_text())
    assert results["meta"]["wall_time_s"] < 75, results["meta"]["wall_time_s"]
    plan = results["plan"]
    assert plan["minutes"] == 1 and results["resume"]["verdict"] in ("ok", "skipped")
    skipped = {s["part"] for s in plan["skipped"]}
    timed = {(r["strategy"], r["members"], r["steps_per_call"], r["dtype"]) for r in results["throughput"]}
    for strategy in ("vmap", "unroll"):
        for members in (1, 2):
            for k in (1, 2):
                for dtype in ("float32", "bfloat16"):
                    assert ((strategy, members, k, dtype) in timed
                            or f"throughput tiny20k {dtype} M={members} {strategy} K={k}" in skipped)
    for s in plan["skipped"]:
        assert f"skipped (time): {s['part']}: {s['why']}" in proc.stdout
    assert f"skipped (time): {len(plan['skipped'])} part(s) of a 1.0-minute budget" in proc.stdout


@pytest.mark.slow
def test_both_layouts_are_timed_on_two_devices(tmp_path):
    """On 2 forced CPU devices, 1 member: members alone (1, 1) against members x data (1, 2),
    timed alternately; the engine's rule on the CPU takes no data axis."""
    out = tmp_path / "check"
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--small", "--skip-resume", "--members=1",
                           "--steps-per-call=1", "--minutes=3", f"--out={out}"], cwd=REPO,
                          env={**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (layouts,) = json.loads((out / "accelerator_check.json").read_text())["layouts"]
    assert layouts["members_only"]["layout"] == [1, 1] and layouts["members_x_data"]["layout"] == [1, 2]
    assert layouts["members_only"]["images_per_s"] > 0 and layouts["members_x_data"]["images_per_s"] > 0
    faster = layouts["members_only"] if layouts["faster"] == "members alone" else layouts["members_x_data"]
    assert layouts["measurement_chooses"] == faster["layout"] and layouts["rule_chooses"] == [1, 1]
    assert f"layouts tiny20k M=1: {layouts['faster']} faster" in proc.stdout


def test_on_one_device_the_two_layouts_are_one(check, monkeypatch):
    monkeypatch.setattr(check.jax, "device_count", lambda: 1)
    mode = check.MODES["small"]
    record = check.compare_layouts(("tiny20k", {}), 2, 8, mode, check.Budget(1, check.time.monotonic()),
                                   check.Timings(), 1.0)
    assert record["same"] == "on 1 device members alone and members x data are the same layout, (1, 1): nothing to compare"
