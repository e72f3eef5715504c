"""Student notebooks run end to end (quick profile); the only errors allowed are the
NotImplementedError of unfinished exercises, raised in their check cells. The solution notebooks
run under nbval (`pytest solutions --nbval-lax`, see the Makefile) in the full profile."""

from pathlib import Path

import pytest

from labsupport import course

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.notebooks
@pytest.mark.parametrize("path", sorted((ROOT / "labs").glob("*.ipynb")), ids=lambda p: p.name)
def test_student_notebook_runs(path, tmp_path):
    result = course.run_notebook(path, tmp_path / path.name, profile="quick", allow_errors=True)
    text = path.read_text()
    n_exercises = text.count("raise NotImplementedError()")
    unexpected = [e for e in result.errors
                  if not (e[1] == "NotImplementedError" and course.EXERCISE_CHECK_TAG in e[2])]
    assert unexpected == [], f"unexpected errors (cell, error, tags): {unexpected}"
    assert len(result.errors) == n_exercises, "every unfinished exercise should fail its check cell"
