"""Grading: nbgrader metadata, checksums and release parity, `labsupport grade`, and a real
nbgrader round trip (generate_assignment -> submit -> autograde) of every solution notebook."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from labsupport import course, grading
from labsupport.cli import main

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
v4 = nbformat.v4


def _exercise_notebook() -> nbformat.NotebookNode:
    """A tiny course notebook: two exercises with checks, one instructor cell."""
    cells = [
        v4.new_markdown_cell("# tiny lab"),
        v4.new_code_cell("def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION"),
        v4.new_code_cell("assert double(3) == 6, 'double(3) should be 6'\nprint('ok')"),
        v4.new_code_cell("def half(x):\n    ### BEGIN SOLUTION\n    return x / 2\n    ### END SOLUTION"),
        v4.new_code_cell("assert half(3) == 1.5, 'half(3) should be 1.5'"),
        v4.new_code_cell("assert True  # full-profile numbers"),
    ]
    cells[2].metadata["tags"] = cells[4].metadata["tags"] = [course.EXERCISE_CHECK_TAG]
    cells[5].metadata["tags"] = [course.INSTRUCTOR_TAG]
    nb = v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    return course.annotate_nbgrader(nb, "tiny")


def test_annotate_gives_valid_nbgrader_metadata():
    nb = _exercise_notebook()
    assert course.nbgrader_problems(nb) == []
    meta = [c.metadata.get("nbgrader") for c in nb.cells]
    assert meta[1]["solution"] and meta[1]["grade_id"] == "tiny-ex1"
    assert meta[2]["grade"] and meta[2]["locked"] and meta[2]["points"] == 1
    assert meta[0] is None and meta[5] is None


def test_problems_are_reported_per_cell():
    nb = _exercise_notebook()
    del nb.cells[1].metadata["nbgrader"]
    nb.cells[4].metadata["nbgrader"]["grade_id"] = "tiny-ex1-check"
    problems = course.nbgrader_problems(nb)
    assert any("cell 1 has a solution region" in p for p in problems)
    assert any("used twice" in p for p in problems)


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solutions_carry_valid_nbgrader_metadata(path):
    nb = nbformat.read(path, as_version=4)
    assert course.nbgrader_problems(nb) == []
    checks = [c for c in nb.cells if course.is_check_cell(c)]
    assert len(checks) >= 3 and all(c.metadata["nbgrader"]["grade"] for c in checks)


def test_checksum_matches_nbgrader():
    utils = pytest.importorskip("nbgrader.utils")
    released = course.student_notebook(_exercise_notebook())
    graded = [c for c in released.cells if "nbgrader" in c.metadata]
    assert len(graded) == 4
    for cell in graded:
        assert cell.metadata.nbgrader["checksum"] == utils.compute_checksum(cell)


def test_student_notebook_drops_instructor_and_locks_checks():
    released = course.student_notebook(_exercise_notebook())
    assert len(released.cells) == 5
    assert released.cells[1].source == "def double(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    assert released.cells[2].metadata["editable"] is False and released.cells[2].metadata["deletable"] is False


@pytest.mark.parametrize("outputs, expected", [
    ([], 2.0),
    ([{"output_type": "stream", "name": "stdout", "text": "\u2714 ok\n"}], 2.0),
    ([{"output_type": "stream", "name": "stderr", "text": "warning\n"}], 0.0),
    ([{"output_type": "error", "ename": "ExerciseError", "evalue": "hint", "traceback": []}], 0.0),
    ([{"output_type": "execute_result", "data": {"text/plain": "0.5"}, "metadata": {}}], 0.5),
    ([{"output_type": "execute_result", "data": {"text/plain": "'text'"}, "metadata": {}}], 2.0),
])
def test_cell_score_follows_nbgrader(outputs, expected):
    assert grading.cell_score(outputs, 2.0)[0] == expected


def test_restore_checks_undoes_edits_and_reports_deleted():
    release = course.student_notebook(_exercise_notebook())
    exercises = grading.release_exercises(release)
    sub = nbformat.from_dict(nbformat.from_dict(release))
    sub.cells[2].source = "pass  # no more check"
    del sub.cells[4]
    assert grading.restore_checks(sub, exercises) == ["tiny-ex2-check"]
    assert sub.cells[2].source == exercises[0].source


def _write(nb, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_grade_command_scores_a_class_in_parallel(tmp_path):
    """Full marks, partial, broken, edited check, deleted check and a hanging submission: each is
    graded on its own; the hanging one is stopped at the time limit without holding up the rest."""
    solution = _exercise_notebook()
    release = course.student_notebook(solution)
    _write(release, tmp_path / "release" / "tiny.ipynb")
    subs = tmp_path / "subs"
    _write(grading.fill_solutions(release, solution), subs / "ada" / "tiny.ipynb")
    half = grading.fill_solutions(release, solution)
    half.cells[3].source = "def half(x):\n    return x // 2"
    _write(half, subs / "bo" / "tiny.ipynb")
    _write(release, subs / "cy" / "tiny.ipynb")  # untouched release
    cheat = nbformat.from_dict(release)
    cheat.cells[2].source = "print('passed')"  # an edited check is restored before running
    _write(cheat, subs / "di" / "tiny.ipynb")
    hang = grading.fill_solutions(release, solution)
    hang.cells.insert(3, v4.new_code_cell("import time\ntime.sleep(600)"))
    _write(hang, subs / "ed" / "tiny.ipynb")
    gone = grading.fill_solutions(release, solution)
    del gone.cells[4]
    _write(gone, subs / "fa" / "tiny.ipynb")

    out = tmp_path / "grades.csv"
    assert main(["grade", str(subs), "--release", str(tmp_path / "release"), "-j", "3",
                 "--timeout", "40", "-o", str(out)]) == 0
    rows = {r["student"]: r for r in csv.DictReader(out.open())}
    assert set(rows) == {"ada", "bo", "cy", "di", "ed", "fa"}
    assert [rows["ada"][k] for k in ("tiny-ex1-check", "tiny-ex2-check", "total", "max", "status")] == \
        ["1", "1", "2", "2", "ok"]
    assert (rows["bo"]["total"], rows["bo"]["tiny-ex2-check"]) == ("1", "0")
    assert "half(3) should be 1.5" in rows["bo"]["errors"]
    assert rows["cy"]["total"] == "0" and "NotImplementedError" in rows["cy"]["errors"]
    assert rows["di"]["total"] == "0"
    assert rows["ed"]["status"] == "timeout" and rows["ed"]["tiny-ex1-check"] == "1"
    assert float(rows["ed"]["seconds"]) < 60
    assert rows["fa"]["total"] == "1" and "deleted" in rows["fa"]["errors"]


def test_a_kernel_that_never_ran_a_cell_is_retried(monkeypatch, tmp_path):
    """A run that failed before executing any cell (kernel start-up) is retried; one whose cells
    ran is the student's result and is not."""
    calls = []

    def attempt(student, *_):
        calls.append(student)
        first = len([c for c in calls if c == student]) == 1
        if student.startswith("flaky") and first:
            died = grading.GradeResult(student, "x", {}, 2.0, status="failed", errors=["could not run: kernel died"])
            return died, False
        if student == "broken":
            return grading.GradeResult(student, "x", {}, 2.0, status="failed", errors=["cell 3: boom"]), True
        return grading.GradeResult(student, "x", {"a": 2.0}, 2.0), True

    monkeypatch.setattr(grading, "_grade_attempt", attempt)
    assert grading.grade_one("flaky", tmp_path, tmp_path).status == "ok" and calls.count("flaky") == 2
    assert grading.grade_one("broken", tmp_path, tmp_path).status == "failed" and calls.count("broken") == 1
    assert grading.grade_one("flaky2", tmp_path, tmp_path, retries=0).status == "failed" and calls.count("flaky2") == 1
    with pytest.raises(ValueError, match="retries"):
        grading.grade_one("x", tmp_path, tmp_path, retries=-1)


def test_grade_rejects_unknown_notebook(tmp_path):
    _write(course.student_notebook(_exercise_notebook()), tmp_path / "release" / "tiny.ipynb")
    _write(_exercise_notebook(), tmp_path / "subs" / "ada" / "other.ipynb")
    with pytest.raises(FileNotFoundError, match="no released notebook named other.ipynb"):
        grading.grade_submissions([tmp_path / "subs"], release_dir=tmp_path / "release")


def test_a_misnamed_notebook_gets_a_failed_row_and_the_others_are_graded(tmp_path, monkeypatch, capsys):
    """One student who renamed the file must not stop the class (README: a broken notebook never
    stops the others); only when nothing matches is the folder itself wrong."""
    _write(course.student_notebook(_exercise_notebook()), tmp_path / "release" / "tiny.ipynb")
    _write(_exercise_notebook(), tmp_path / "subs" / "ada" / "other.ipynb")
    _write(_exercise_notebook(), tmp_path / "subs" / "bo" / "tiny.ipynb")
    graded = []

    def grade_one(student, nb, rel, **kwargs):
        graded.append((student, rel.name))
        return grading.GradeResult(student, str(nb), {"a": 1.0}, 2.0)
    monkeypatch.setattr(grading, "grade_one", grade_one)
    done = []
    ada, bo = grading.grade_submissions([tmp_path / "subs"], release_dir=tmp_path / "release",
                                        on_done=lambda r, k, n: done.append((r.student, k, n)))
    assert graded == [("bo", "tiny.ipynb")] and bo.total == 1.0 and bo.status == "ok"
    assert done == [("bo", 1, 1)]   # the progress callback, once per graded submission
    assert ada.student == "ada" and ada.status == "failed" and ada.total == 0
    assert ada.errors == [f"not graded: {tmp_path / 'subs' / 'ada' / 'other.ipynb'}: no released notebook named "
                          f"other.ipynb in {tmp_path / 'release'}; submissions must keep the lab's file name, "
                          "one of ['tiny.ipynb']"]
    # the CLI's start line counts what it will grade, and says what it will not
    assert main(["grade", str(tmp_path / "subs"), "--release", str(tmp_path / "release"),
                 "--out", str(tmp_path / "g.csv")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("grading 1 submission(s), 1 at a time") and "1 notebook(s) match no lab" in err
    assert "[1/1] bo" in err


def test_grade_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="jobs"):
        grading.grade_submissions([tmp_path], jobs=0)
    with pytest.raises(FileNotFoundError, match="neither a notebook nor a folder"):
        grading.collect_submissions([tmp_path / "missing.txt"])


def test_student_folders_without_a_notebook_are_reported(tmp_path, monkeypatch, capsys):
    _write(_exercise_notebook(), tmp_path / "subs" / "ada" / "lab1_poisoning.ipynb")
    _write(_exercise_notebook(), tmp_path / "subs" / "eve" / ".ipynb_checkpoints" / "lab1_poisoning.ipynb")
    (tmp_path / "subs" / "bob").mkdir()
    (tmp_path / "subs" / ".git").mkdir()
    assert grading.students_without_notebooks([tmp_path / "subs"]) == ["bob", "eve"]
    assert [s for s, _ in grading.collect_submissions([tmp_path / "subs"])] == ["ada"]
    monkeypatch.setattr(grading, "grade_submissions",
                        lambda *a, **k: [grading.GradeResult("ada", "lab1_poisoning.ipynb", {"a": 1.0}, 1.0)])
    assert main(["grade", str(tmp_path / "subs"), "--out", str(tmp_path / "g.csv")]) == 0
    assert "no notebook from 2 student folder(s), so no row in g.csv: bob, eve" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Real nbgrader, offline, sqlite gradebook, quick profile
# ---------------------------------------------------------------------------------------------

def _nbgrader(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "nbgrader"
    proc = subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.notebooks
@pytest.mark.parametrize("name", [p.stem for p in SOLUTIONS])
def test_nbgrader_round_trip(name, tmp_path):
    """generate_assignment releases exactly labs/<name>; autograde gives the reference answers
    full marks and the untouched release 0, and that untouched run fails only in its exercises'
    check cells (the student-notebook run of test_notebooks.py, done once here)."""
    pytest.importorskip("nbgrader", reason="install the grading extra: pip install -e '.[grading]'")
    from nbgrader.api import Gradebook

    course_dir = tmp_path / "course"
    assert name in grading.setup_nbgrader_course(course_dir, root=ROOT)
    env = {**os.environ, "LABSUPPORT_PROFILE": "quick",
           # nbgrader runs `alembic` from PATH for its database
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    _nbgrader(["generate_assignment", name, "--force"], course_dir, env)
    released = nbformat.read(course_dir / "release" / name / f"{name}.ipynb", as_version=4)
    ours = nbformat.read(ROOT / "labs" / f"{name}.ipynb", as_version=4)
    def cells(nb):
        return [(c.cell_type, c.source, dict(c.metadata)) for c in nb.cells]

    assert cells(released) == cells(ours), f"labs/{name} differs from nbgrader's release"
    solution = nbformat.read(course_dir / "source" / name / f"{name}.ipynb", as_version=4)
    for student, nb in (("alice", grading.fill_solutions(released, solution)), ("bob", released)):
        _write(nb, course_dir / "submitted" / student / name / f"{name}.ipynb")
    _nbgrader(["autograde", name, "--force"], course_dir, env)
    with Gradebook(f"sqlite:///{course_dir / 'gradebook.db'}") as gb:
        alice = gb.find_submission(name, "alice")
        bob = gb.find_submission(name, "bob")
        assert alice.max_score >= 3
        assert alice.score == alice.max_score, f"{name}: the solution scored {alice.score}/{alice.max_score}"
        assert bob.score == 0, f"{name}: the untouched release scored {bob.score}"
    untouched = nbformat.read(course_dir / "autograded" / "bob" / name / f"{name}.ipynb", as_version=4)
    assert course.unfinished_run_problems(ours, course.notebook_errors(untouched)) == []
    shutil.rmtree(course_dir, ignore_errors=True)


def test_an_interrupted_grade_stops_its_children(monkeypatch):
    """The grading children run in sessions of their own (so a timeout can kill a whole kernel
    tree); Ctrl-C and SIGTERM reach only the parent, which must stop them itself."""
    import threading
    import time

    real = subprocess.Popen
    monkeypatch.setattr(grading.subprocess, "Popen",   # a child that would run for a minute
                        lambda cmd, **kw: real([sys.executable, "-c", "import time; time.sleep(60)"], **kw))
    release = course.repo_root() / "labs" / "lab1_poisoning.ipynb"
    out = []
    worker = threading.Thread(target=lambda: out.append(grading.grade_one("s", release, release, retries=0)))
    worker.start()
    for _ in range(200):
        if grading._LIVE:
            break
        time.sleep(0.05)
    (pid,) = grading._LIVE
    try:
        assert grading.stop_all() == 1
        worker.join(10)
        assert not worker.is_alive() and out[0].status == "failed" and not grading._LIVE
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        with pytest.raises(grading.GradingInterrupted):   # and nothing new starts
            grading.grade_one("t", release, release, retries=0)
    finally:
        grading._STOPPING.clear()


def test_sigterm_to_grade_is_reported_and_writes_no_csv(monkeypatch, tmp_path, capsys):
    import signal
    import time

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not interrupt grading")
    monkeypatch.setattr(grading, "grade_submissions", killed)
    before = signal.getsignal(signal.SIGTERM)
    _write(_exercise_notebook(), tmp_path / "subs" / "ada" / "lab1_poisoning.ipynb")
    assert main(["grade", str(tmp_path / "subs"), "--out", str(tmp_path / "g.csv")]) == 130
    assert "interrupted; the running submissions were stopped" in capsys.readouterr().err
    assert not (tmp_path / "g.csv").exists() and signal.getsignal(signal.SIGTERM) is before
