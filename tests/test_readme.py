"""The README is the front door: CI must run exactly the test command it shows."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
                if "pytest" in line and not line.lstrip().startswith("#")]
    assert len(ci_lines) == 1
    command = ci_lines[0].strip()
    assert command in readme, f"{command!r} is not the README's test command"


def test_readme_main_job_trains_the_quick_config():
    readme = (REPO / "README.md").read_text()
    assert "-m mnist_jax.main --config=configs/quick.py" in readme
    assert (REPO / "configs" / "quick.py").exists()
