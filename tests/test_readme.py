"""The README is the front door: CI runs the test command it shows, and its links and tables are current."""

import json
import re
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


def _heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a Markdown file's headings (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_every_link_between_the_docs_reaches_its_file_and_heading():
    docs = [REPO / "README.md", *sorted((REPO / "experiments" / "results").glob("*.md"))]
    broken = []
    for doc in docs:
        prose = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            if not linked.exists():
                broken.append(f"{doc.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _heading_anchors(linked.read_text()):
                broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, broken


def test_readme_reproduction_table_is_the_one_made_from_the_json(experiment):
    reproduce = experiment("reproduce")
    table = reproduce.table(reproduce.read_runs(reproduce.RESULTS))
    assert table.strip() in (REPO / "README.md").read_text(), (
        "the README's reproduction table is stale: paste `python experiments/reproduce.py --table`")


def test_readme_time_to_accuracy_table_is_the_one_made_from_the_json(experiment):
    time_to_accuracy = experiment("time_to_accuracy")
    summary = json.loads((REPO / "experiments" / "results" / "time_to_accuracy.json").read_text())
    rows = "\n".join(line for line in time_to_accuracy.table(summary).splitlines() if line.startswith("|"))
    assert rows in (REPO / "README.md").read_text(), (
        "the README's time-to-accuracy table is stale: paste `python experiments/time_to_accuracy.py "
        "--table experiments/results/time_to_accuracy.json`")
