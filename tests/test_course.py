"""The student notebooks are generated from solutions/ and must never be stale."""

from pathlib import Path

import nbformat
import pytest

from labsupport import course

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


def test_labs_are_not_stale():
    status = course.generate_labs(ROOT, check=True)
    assert status.stale == [], "labs/ is stale: run `labsupport labs generate` and commit"


@pytest.mark.parametrize("path", SOLUTIONS + sorted((ROOT / "labs").glob("*.ipynb")), ids=lambda p: p.name)
def test_outputs_are_cleared(path):
    assert not course.notebook_has_outputs(path), f"{path} has outputs; clear them before committing"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_lab_hides_solutions_and_keeps_checks(path):
    lab = nbformat.read(ROOT / "labs" / path.name, as_version=4)
    text = "\n".join(c.source for c in lab.cells)
    assert course.BEGIN not in text and course.END not in text
    n_exercises = text.count("raise NotImplementedError()")
    n_checks = sum(course.EXERCISE_CHECK_TAG in c.metadata.get("tags", []) for c in lab.cells)
    assert n_exercises >= 3 and n_checks == n_exercises
    assert not any(course.INSTRUCTOR_TAG in c.metadata.get("tags", []) for c in lab.cells)
    sol = nbformat.read(path, as_version=4)
    assert any("parameters" in c.metadata.get("tags", []) for c in sol.cells)


def test_strip_solutions_keeps_indentation():
    assert course.strip_solutions("### BEGIN SOLUTION\nx = 1\n### END SOLUTION") == course.CODE_STUB
    with pytest.raises(ValueError, match="nested"):
        course.strip_solutions("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n### END SOLUTION")
    src = "def f(x):\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\n\nprint(1)"
    assert course.strip_solutions(src) == "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()\n\nprint(1)"


def test_unbalanced_markers_are_an_error():
    with pytest.raises(ValueError, match="unbalanced"):
        course.strip_solutions("### BEGIN SOLUTION\nx = 1\n")


def test_generate_writes_and_detects_edits(tmp_path):
    (tmp_path / "solutions").mkdir()
    cell = nbformat.v4.new_code_cell("x = 1\n### BEGIN SOLUTION\ny = 2\n### END SOLUTION")
    nb = nbformat.v4.new_notebook(cells=[cell])
    nbformat.write(nb, tmp_path / "solutions" / "a.ipynb")
    with pytest.raises(ValueError, match="solution region but no nbgrader"):
        course.generate_labs(tmp_path, check=True)
    assert course.annotate_solutions(tmp_path) == [tmp_path / "solutions" / "a.ipynb"]
    nb = nbformat.read(tmp_path / "solutions" / "a.ipynb", as_version=4)
    assert course.generate_labs(tmp_path, check=True).stale == [tmp_path / "labs" / "a.ipynb"]
    assert course.generate_labs(tmp_path).written == [tmp_path / "labs" / "a.ipynb"]
    assert course.generate_labs(tmp_path, check=True).stale == []
    nb.cells[0].source = nb.cells[0].source.replace("y = 2", "y = 3")
    nb.cells.append(nbformat.v4.new_markdown_cell("new"))
    nbformat.write(nb, tmp_path / "solutions" / "a.ipynb")
    assert course.generate_labs(tmp_path, check=True).stale == [tmp_path / "labs" / "a.ipynb"]


def test_unfinished_run_problems_allows_only_the_exercises_own_failures():
    v4 = nbformat.v4
    student = v4.new_notebook(cells=[
        v4.new_code_cell("def f():\n    raise NotImplementedError()"),
        v4.new_code_cell("check(f)"),
        v4.new_code_cell("def g():\n    raise NotImplementedError()"),
        v4.new_code_cell("check(g)"),
    ])
    check = course.EXERCISE_CHECK_TAG
    assert course.unfinished_run_problems(student, [(1, "NotImplementedError", check),
                                                    (3, "NotImplementedError", f"x,{check}")]) == []
    # an error outside a check cell, a wrong error in a check cell, a check that passed
    assert course.unfinished_run_problems(student, [(1, "NotImplementedError", check),
                                                    (3, "NotImplementedError", "")])[0].startswith("cell 3")
    assert "ValueError" in course.unfinished_run_problems(student, [(1, "ValueError", check),
                                                                    (3, "NotImplementedError", check)])[0]
    assert "1 errors for 2" in course.unfinished_run_problems(student, [(1, "NotImplementedError", check)])[0]


def test_notebook_errors_reads_error_outputs():
    v4 = nbformat.v4
    cell = v4.new_code_cell("1/0", metadata={"tags": ["a", "b"]})
    cell.outputs = [v4.new_output("stream", text="x"), v4.new_output("error", ename="ZeroDivisionError",
                                                                      evalue="", traceback=[])]
    nb = v4.new_notebook(cells=[v4.new_markdown_cell("t"), cell])
    assert course.notebook_errors(nb) == [(1, "ZeroDivisionError", "a,b")]
