"""The notebooks under notebooks/ as files: the four of issue 8 are there, kept without
outputs, parameterisable, and each one cleans up what it started. (Running them is the
``notebook`` tests: ``pytest --nbmake notebooks``.)"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.unit

NOTEBOOKS = REPO / "notebooks"
EXPECTED = ("01_quickstart.ipynb", "02_online_learning.ipynb",
            "03_scale_with_simulator.ipynb", "04_otlp_pipeline.ipynb")
#: Code that starts an embedded Ray (directly, or by replaying through ray_sched) ...
STARTS_RAY = re.compile(r"^\s*import ray\b|\bray\.init\(|\b(?:compare|replay)\(", re.MULTILINE)
#: ... or a process the notebook must stop.
STARTS_PROCESS = re.compile(r"\bsubprocess\.Popen\(")


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def code_cells(path: Path) -> list[dict]:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    return [c for c in notebook["cells"] if c["cell_type"] == "code"]


def source(cell: dict) -> str:
    text = cell["source"]
    return text if isinstance(text, str) else "".join(text)


def test_the_four_notebooks_of_issue_8_exist():
    assert set(EXPECTED) <= {p.name for p in notebook_paths()}


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    for index, cell in enumerate(code_cells(path)):
        assert cell.get("outputs") == [], f"code cell {index} has outputs"
        assert cell.get("execution_count") is None, f"code cell {index} has an execution count"


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.name)
def test_notebook_opens_with_a_markdown_intro_saying_how_to_run_it(path):
    first = json.loads(path.read_text(encoding="utf-8"))["cells"][0]
    assert first["cell_type"] == "markdown"
    assert source(first).startswith("# ") and "How to run" in source(first)


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.name)
def test_first_code_cell_is_tagged_parameters_and_only_assigns(path):
    first = code_cells(path)[0]
    assert "parameters" in first.get("metadata", {}).get("tags", [])
    statements = ast.parse(source(first)).body
    assert statements and all(isinstance(s, ast.Assign) for s in statements), (
        "the parameters cell should hold plain assignments (papermill overrides them)")


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.name)
def test_last_code_cell_cleans_up_what_the_notebook_started(path):
    cells = code_cells(path)
    everything = "\n".join(source(c) for c in cells)
    last = source(cells[-1])
    if STARTS_RAY.search(everything):
        assert "ray.shutdown()" in last, "starts Ray but its last code cell does not stop it"
    if STARTS_PROCESS.search(everything):
        assert ".terminate()" in last or ".kill()" in last, (
            "starts a process but its last code cell does not stop it")
