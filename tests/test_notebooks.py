"""Student notebooks run end to end (quick profile); the only errors allowed are the
NotImplementedError of unfinished exercises, raised in their check cells. The solution notebooks
run under nbval (`pytest solutions --nbval-lax`, see the Makefile) in the full profile.

Where nbgrader is installed (the `grading` extra, as in CI), the same run is the untouched
submission of `test_grading.py::test_nbgrader_round_trip`, which asserts the same and its score;
this test runs each notebook itself only where nbgrader is absent, so CI runs it once."""

import importlib.util
from pathlib import Path

import nbformat
import pytest

from labsupport import course

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.notebooks
@pytest.mark.skipif(importlib.util.find_spec("nbgrader") is not None,
                    reason="run as the untouched submission in test_grading.py::test_nbgrader_round_trip")
@pytest.mark.parametrize("path", sorted((ROOT / "labs").glob("*.ipynb")), ids=lambda p: p.name)
def test_student_notebook_runs(path, tmp_path):
    result = course.run_notebook(path, tmp_path / path.name, profile="quick", allow_errors=True)
    student = nbformat.read(path, as_version=4)
    assert course.unfinished_run_problems(student, result.errors) == []
