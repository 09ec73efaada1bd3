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


RESULTS_DOCS = REPO / "experiments" / "results"


def test_readme_reproduced_systems_table_is_the_summary_made_from_the_json(experiment):
    reproduce = experiment("reproduce")
    summary = reproduce.summary(reproduce.read_runs(reproduce.RESULTS))
    assert summary.strip() in (REPO / "README.md").read_text(), (
        "the README's reproduced-systems table is stale: paste `python experiments/reproduce.py --summary`")
    assert len(summary.splitlines()) == 2 + len(reproduce.REFERENCE_SYSTEMS)


def test_every_run_table_is_the_one_made_from_the_json(experiment):
    reproduce = experiment("reproduce")
    table = reproduce.table(reproduce.read_runs(reproduce.RESULTS))
    assert table.strip() in (RESULTS_DOCS / "reproduction.md").read_text(), (
        "experiments/results/reproduction.md's table is stale: paste `python experiments/reproduce.py --table`")


def test_time_to_accuracy_table_is_the_one_made_from_the_json(experiment):
    time_to_accuracy = experiment("time_to_accuracy")
    summary = json.loads((RESULTS_DOCS / "time_to_accuracy.json").read_text())
    rows = "\n".join(line for line in time_to_accuracy.table(summary).splitlines() if line.startswith("|"))
    assert rows in (RESULTS_DOCS / "time_to_accuracy.md").read_text(), (
        "experiments/results/time_to_accuracy.md's table is stale: paste `python "
        "experiments/time_to_accuracy.py --table experiments/results/time_to_accuracy.json`")


def test_readme_quick_start_output_is_the_measured_one(experiment):
    quickstart = experiment("quickstart")
    block = quickstart.readme_block(json.loads(quickstart.RESULTS.read_text()))
    assert block in (REPO / "README.md").read_text(), (
        "the README's command-1 output is stale: paste `python experiments/quickstart.py --readme`")


def test_readme_reads_as_documentation_not_a_lab_notebook():
    """Short, no long lines, few dates: measurements and their stories live in experiments/results/."""
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 220
    assert [n for n, line in enumerate(lines, 1) if len(line) > 300] == []
    dated = [line for line in lines if re.search(r"\b20\d\d-\d\d-\d\d\b", line)]
    assert len(dated) <= 6, dated
