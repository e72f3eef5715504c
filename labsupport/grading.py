"""Grading: ``labsupport grade`` for instructors without nbgrader, and the nbgrader course setup.

``labsupport grade SUBMISSION...`` runs every submitted notebook in its own process and kernel
(``-j N`` at a time, each with a wall-clock limit), restores the locked check cells from the
release first (as nbgrader's ``OverwriteCells`` does, so an edited check cannot award points),
and scores each check cell as nbgrader does: an error or anything on stderr gives 0, a numeric
result gives partial credit, anything else full points. One CSV row per submission: points per
exercise, total, errors and run time. A broken or hanging submission never stops the others.

``labsupport nbgrader setup DIR`` makes an nbgrader course directory from ``solutions/`` whose
``generate_assignment`` drops the ``instructor`` cells (:class:`DropInstructorCells`) and so
releases exactly ``labs/``.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from ._validate import check_int
from .course import repo_root
from .io import atomic_write_bytes

# ---------------------------------------------------------------------------------------------
# nbgrader integration
# ---------------------------------------------------------------------------------------------

NBGRADER_CONFIG = '''\
# nbgrader configuration written by `labsupport nbgrader setup`.
from labsupport.nbgrader_plugin import release_preprocessors

c = get_config()  # noqa: F821
c.CourseDirectory.course_id = {course_id!r}
c.CourseDirectory.db_url = "sqlite:///" + {db!r}
# Cells tagged `instructor` (CI's assertions on the full-profile numbers) stay out of the release.
c.GenerateAssignment.preprocessors = release_preprocessors()
# Training cells take minutes on a CPU; nbgrader's default is 30 s per cell.
c.ExecutePreprocessor.timeout = {cell_timeout}
'''


def setup_nbgrader_course(course_dir: str | os.PathLike, *, root: Path | None = None,
                          course_id: str = "poisoning-labs", cell_timeout: int = 1800) -> list[str]:
    """Create an nbgrader course directory: ``nbgrader_config.py`` and ``source/<lab>/<lab>.ipynb``
    for every solution notebook. Returns the assignment names."""
    check_int("cell_timeout", cell_timeout, low=1)
    course = Path(course_dir).resolve()
    root = repo_root() if root is None else Path(root)
    solutions = sorted((root / "solutions").glob("*.ipynb"))
    if not solutions:
        raise FileNotFoundError(f"no solution notebooks in {root / 'solutions'}")
    names = []
    for path in solutions:
        dest = course / "source" / path.stem / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        names.append(path.stem)
    config = NBGRADER_CONFIG.format(course_id=course_id, db=str(course / "gradebook.db"),
                                    cell_timeout=cell_timeout)
    atomic_write_bytes(course / "nbgrader_config.py", config.encode())
    return names


# ---------------------------------------------------------------------------------------------
# labsupport grade
# ---------------------------------------------------------------------------------------------

@dataclass
class Exercise:
    grade_id: str
    points: float
    source: str


@dataclass
class GradeResult:
    """The grade of one submitted notebook."""

    student: str
    notebook: str
    points: dict[str, float] = field(default_factory=dict)  # grade_id -> points earned
    max_points: float = 0.0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    status: str = "ok"  # ok | timeout | failed

    @property
    def total(self) -> float:
        return sum(self.points.values())


def release_exercises(release: nbformat.NotebookNode) -> list[Exercise]:
    """The autograded check cells of a released notebook, in order."""
    out = []
    for cell in release.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade"):
            out.append(Exercise(meta["grade_id"], float(meta.get("points", 0)), cell.source))
    return out


def fill_solutions(release: nbformat.NotebookNode, solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``release`` with every solution cell answered from ``solution`` (matched by grade
    id): the reference submission, for testing a grading setup end to end."""
    import copy

    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in solution.cells
               if c.metadata.get("nbgrader", {}).get("solution")}
    nb = copy.deepcopy(release)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if cell.metadata.get("nbgrader", {}).get("solution") and gid in answers:
            cell.source = answers[gid]
    return nb


@functools.lru_cache(maxsize=32)
def _exercises_of(release: Path, mtime: float) -> tuple[Exercise, ...]:
    return tuple(release_exercises(nbformat.read(release, as_version=4)))


def exercises_of(release: Path) -> list[Exercise]:
    """The check cells of a release file, parsed once per file version."""
    return list(_exercises_of(Path(release), Path(release).stat().st_mtime))


def restore_checks(submission: nbformat.NotebookNode, exercises: list[Exercise]) -> list[str]:
    """Put the released source back into every check cell (matched by grade id), in place.
    Returns the grade ids whose cell the student deleted (they score 0)."""
    by_id = {e.grade_id: e for e in exercises}
    seen = set()
    for cell in submission.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in by_id:
            cell.source = by_id[gid].source
            cell.cell_type = "code"
            seen.add(gid)
    return [e.grade_id for e in exercises if e.grade_id not in seen]


def cell_score(outputs: list[dict], points: float) -> tuple[float, str]:
    """nbgrader's rule: an error or stderr output gives 0; a numeric result gives that many points
    (capped at ``points``); otherwise full points. Returns (points, reason if not full)."""
    for out in outputs:
        if out.get("output_type") == "error":
            return 0.0, f"{out.get('ename', 'Error')}: {out.get('evalue', '')}"[:200]
        if out.get("output_type") == "stream" and out.get("name") == "stderr":
            return 0.0, "wrote to stderr: " + "".join(out.get("text", ""))[:160]
        if out.get("output_type") == "execute_result":
            text = out.get("data", {}).get("text/plain", "")
            try:
                return max(0.0, min(points, float("".join(text)))), "partial credit"
            except ValueError:
                pass
    return points, ""


def find_release(submission: Path, release_dir: Path) -> Path:
    """The released notebook a submission answers: ``release_dir/<same file name>``."""
    candidate = release_dir / submission.name
    if not candidate.exists():
        known = sorted(p.name for p in release_dir.glob("*.ipynb"))
        raise FileNotFoundError(f"{submission}: no released notebook named {submission.name} in {release_dir}; "
                                f"submissions must keep the lab's file name, one of {known}")
    return candidate


def _student_name(path: Path, base: Path) -> str:
    """The student a submission belongs to: its folder below the submissions root, else the file's."""
    try:
        parts = path.relative_to(base).parts
    except ValueError:
        parts = (path.name,)
    return parts[0] if len(parts) > 1 else path.parent.name or path.stem


def collect_submissions(paths: list[str | os.PathLike]) -> list[tuple[str, Path]]:
    """(student, notebook) for every ``.ipynb`` named or found below the folders given."""
    found = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for nb in sorted(p.rglob("*.ipynb")):
                if ".ipynb_checkpoints" not in nb.parts:
                    found.append((_student_name(nb, p), nb))
        elif p.is_file() and p.suffix == ".ipynb":
            found.append((p.parent.name or p.stem, p))
        else:
            raise FileNotFoundError(f"submission {p} is neither a notebook nor a folder")
    if not found:
        raise FileNotFoundError(f"no notebooks found in {[str(p) for p in paths]}")
    return found


def students_without_notebooks(paths: list[str | os.PathLike]) -> list[str]:
    """The student folders (the subfolders of the folders given) that hold no notebook at all:
    they get no row in the grades, so the instructor is told."""
    return sorted(d.name for raw in paths if Path(raw).is_dir() for d in Path(raw).iterdir()
                  if d.is_dir() and not d.name.startswith(".")
                  and not any(".ipynb_checkpoints" not in nb.parts for nb in d.rglob("*.ipynb")))


def _run_one(submission: Path, release: Path, results: Path, cell_timeout: int) -> None:
    """Child process: restore the checks, execute, and append one JSON line per finished cell."""
    from nbclient import NotebookClient

    nb = nbformat.read(submission, as_version=4)
    exercises = exercises_of(release)
    missing = restore_checks(nb, exercises)
    ids = {e.grade_id for e in exercises}
    log = open(results, "a", buffering=1)
    for gid in missing:
        log.write(json.dumps({"grade_id": gid, "outputs": [{"output_type": "error", "ename": "Missing",
                                                             "evalue": "check cell deleted"}]}) + "\n")

    def started(**_):
        log.write(json.dumps({"kernel_pid": client.km.provisioner.pid}) + "\n")

    def executed(cell, cell_index, **_):
        log.write(json.dumps({"executed": cell_index}) + "\n")
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if gid in ids or errors:
            log.write(json.dumps({"grade_id": gid if gid in ids else None, "cell": cell_index,
                                  "outputs": cell.get("outputs", [])}) + "\n")

    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(submission.parent)}},
                            on_notebook_start=started, on_cell_executed=executed)
    client.execute()
    log.write(json.dumps({"done": True}) + "\n")


def _score(student: str, submission: Path, release: Path, results: Path, status: str,
           seconds: float) -> tuple[GradeResult, bool]:
    """The grade from the child's log, and whether its kernel executed any cell."""
    exercises = exercises_of(release)
    res = GradeResult(student, str(submission), {e.grade_id: 0.0 for e in exercises},
                      sum(e.points for e in exercises), seconds=seconds, status=status)
    points = {e.grade_id: e.points for e in exercises}
    lines = results.read_text().splitlines() if results.exists() else []
    done = ran = False
    for line in lines:
        rec = json.loads(line)
        done |= bool(rec.get("done"))
        ran |= "executed" in rec
        gid = rec.get("grade_id")
        if gid in points:
            res.points[gid], why = cell_score(rec["outputs"], points[gid])
            if why and why != "partial credit":
                res.errors.append(f"{gid}: {why}")
        elif "outputs" in rec:
            _, why = cell_score(rec["outputs"], 1.0)
            res.errors.append(f"cell {rec.get('cell')}: {why}")
    if status == "ok" and not done:
        res.status = "failed"
    return res, ran


def _kill_kernel(results: Path) -> None:
    if not results.exists():
        return
    for line in results.read_text().splitlines():
        try:
            pid = json.loads(line).get("kernel_pid")
        except ValueError:   # a line the child is still writing
            continue
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


# The grading children now running (pid -> results file, where each writes its kernel's pid), so
# that an interrupted ``grade`` stops them: they run in sessions of their own, out of reach of the
# terminal's Ctrl-C and of a SIGTERM sent to the parent.
_LIVE: dict[int, Path] = {}
_LIVE_LOCK = threading.Lock()
_STOPPING = threading.Event()


class GradingInterrupted(RuntimeError):
    """Grading was stopped (Ctrl-C or SIGTERM) before this submission started."""


def stop_all() -> int:
    """Kill every running grading child and its kernel, and start no more; returns how many ran."""
    _STOPPING.set()
    with _LIVE_LOCK:
        live = list(_LIVE.items())
    for pid, results in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        _kill_kernel(results)
    return len(live)


def grade_one(student: str, submission: Path, release: Path, *, timeout: float = 1800,
              profile: str | None = None, threads: int | None = None, retries: int = 1) -> GradeResult:
    """Execute and score one submission in a child process killed after ``timeout`` seconds.

    A run that fails before its kernel executed a single cell (a kernel that did not start or died
    at once - under load, or when parallel kernels race for ports) is not the student's doing: it
    is tried again, up to ``retries`` times."""
    check_int("retries", retries, low=0)
    for _ in range(retries + 1):
        res, ran = _grade_attempt(student, submission, release, timeout, profile, threads)
        if res.status != "failed" or ran:
            break
    return res


def _grade_attempt(student: str, submission: Path, release: Path, timeout: float, profile: str | None,
                   threads: int | None) -> tuple[GradeResult, bool]:
    """One run of :func:`grade_one`: the result and whether any cell was executed."""
    with tempfile.TemporaryDirectory(prefix="labsupport-grade-") as tmp:
        results = Path(tmp) / "results.jsonl"
        env = dict(os.environ)
        if profile:
            env["LABSUPPORT_PROFILE"] = profile
        if threads:
            env["LABSUPPORT_THREADS"] = str(threads)
        cmd = [sys.executable, "-m", "labsupport.grading", str(submission), str(release), str(results),
               str(max(1, int(timeout)))]
        start = time.perf_counter()
        with _LIVE_LOCK:
            if _STOPPING.is_set():
                raise GradingInterrupted(f"{student}: not started, grading was stopped")
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    start_new_session=True)
            _LIVE[proc.pid] = results
        try:
            _, err = proc.communicate(timeout=timeout)
            status = "ok" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            err, status = b"", "timeout"
        finally:
            with _LIVE_LOCK:
                _LIVE.pop(proc.pid, None)
            _kill_kernel(results)
        res, ran = _score(student, submission, release, results, status, time.perf_counter() - start)
        if status == "timeout":
            res.errors.append(f"stopped after the time limit of {timeout:.0f} s")
        elif status == "failed" and err:
            res.errors.append("could not run: " + err.decode("utf-8", "replace").strip().splitlines()[-1][:200])
        return res, ran


def check_grade_options(jobs: int, timeout: float) -> tuple[int, float]:
    """``jobs`` (≥ 1) and ``timeout`` (> 0 seconds), checked before anything is collected or run."""
    jobs = check_int("jobs", jobs, low=1)
    if not timeout > 0:
        raise ValueError(f"timeout={timeout} must be > 0 seconds")
    return jobs, timeout


def match_releases(subs: list[tuple[str, Path]], release_dir: Path | None = None
                   ) -> tuple[dict[int, Path], dict[int, str]]:
    """For each submission (as ``collect_submissions`` lists them), by index: the released lab it
    answers, or why none matches. Raises when none matches (the wrong folder)."""
    release_dir = Path(release_dir) if release_dir else repo_root() / "labs"
    releases: dict[int, Path] = {}
    unknown: dict[int, str] = {}
    for i, (_, nb) in enumerate(subs):
        try:
            releases[i] = find_release(nb, release_dir)
        except FileNotFoundError as exc:
            unknown[i] = str(exc)
    if not releases:
        raise FileNotFoundError(next(iter(unknown.values())))
    return releases, unknown


def grade_submissions(paths: list[str | os.PathLike], *, release_dir: Path | None = None, jobs: int = 1,
                      timeout: float = 1800, profile: str | None = None,
                      on_done: Callable[[GradeResult, int, int], None] | None = None) -> list[GradeResult]:
    """Grade every submission under ``paths`` against ``release_dir`` (default ``labs/``),
    ``jobs`` at a time. Results come back in the order the submissions were found. A notebook
    whose file name matches no released lab gets a ``failed`` row that says so, and the others
    are graded; when none matches (the wrong folder), nothing runs and the error says why.
    ``on_done(result, k, n)`` is called as each submission finishes (the k-th of n), for progress."""
    jobs, timeout = check_grade_options(jobs, timeout)
    subs = collect_submissions(paths)
    releases, unknown = match_releases(subs, release_dir)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    finished = [0]
    lock = threading.Lock()

    def done(res: GradeResult) -> GradeResult:
        if on_done is not None:
            with lock:
                finished[0] += 1
                on_done(res, finished[0], len(releases))
        return res

    def one(i: int, rel: Path) -> GradeResult:
        return done(grade_one(subs[i][0], subs[i][1], rel, timeout=timeout, profile=profile, threads=threads))

    _STOPPING.clear()
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = {i: pool.submit(one, i, rel) for i, rel in releases.items()}
        return [futures[i].result() if i in futures else
                GradeResult(student, str(nb), status="failed", errors=["not graded: " + unknown[i]])
                for i, (student, nb) in enumerate(subs)]
    except BaseException:   # Ctrl-C (or SIGTERM, which the CLI turns into it): stop every child
        stop_all()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def write_csv(results: list[GradeResult], path: str | os.PathLike) -> Path:
    """One row per submission: student, notebook, points per exercise, total, max, status,
    seconds, errors (``; ``-separated)."""
    ids: list[str] = []
    for r in results:
        ids += [g for g in r.points if g not in ids]
    header = ["student", "notebook", *ids, "total", "max", "status", "seconds", "errors"]
    rows = [[r.student, r.notebook, *[_fmt(r.points[g]) if g in r.points else "" for g in ids],
             _fmt(r.total), _fmt(r.max_points), r.status, f"{r.seconds:.1f}", "; ".join(r.errors)]
            for r in results]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_bytes(path, buf.getvalue().encode())


def _fmt(x: float) -> str:
    return f"{x:g}"


if __name__ == "__main__":  # the child process of grade_one
    sub, rel, out, limit = sys.argv[1:5]
    _run_one(Path(sub), Path(rel), Path(out), int(limit))
