"""Course tooling: generate the student notebooks in ``labs/`` from ``solutions/`` exactly as
nbgrader's ``generate_assignment`` releases them, and run notebooks headless.

Rules (nbgrader, schema 3):

* A code cell holding a ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region is an nbgrader
  *solution* cell; the region becomes ``# YOUR CODE HERE`` / ``raise NotImplementedError()`` at the
  same indentation (a solution cell without a region is replaced whole).
* A cell tagged ``exercise-check`` is an nbgrader *autograded test* cell (``grade``, ``locked``,
  ``points``); it passes silently (stdout only) or raises.
* Cells tagged ``instructor`` (assertions on the key numbers, used by CI) are left out of the
  release (nbgrader does the same through :class:`labsupport.grading.DropInstructorCells`).
* Outputs are cleared; locked cells get ``deletable``/``editable`` false and every nbgrader cell its
  checksum, as nbgrader's ``LockCells`` and ``ComputeChecksums`` do.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import nbformat

from .io import atomic_write_bytes

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
INSTRUCTOR_TAG = "instructor"
EXERCISE_CHECK_TAG = "exercise-check"


NBGRADER_SCHEMA = 3
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"


def repo_root() -> Path:
    """The course checkout (the folder holding ``solutions/`` and ``labs/``)."""
    env = os.environ.get("LABSUPPORT_REPO")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent
    return here if (here / "solutions").is_dir() else Path.cwd()


def strip_solutions(source: str) -> str:
    """Replace every solution region in ``source`` by the ``NotImplementedError`` stub, line by
    line as nbgrader's ``ClearSolutions`` does (the stub takes the ``BEGIN`` line's indentation)."""
    if source.count(BEGIN) != source.count(END):
        raise ValueError(f"unbalanced solution markers ({source.count(BEGIN)} BEGIN, "
                         f"{source.count(END)} END) in cell:\n{source[:200]}")
    out, inside = [], False
    for line in source.split("\n"):
        if BEGIN in line:
            if inside:
                raise ValueError(f"nested {BEGIN} in cell:\n{source[:200]}")
            inside = True
            indent = re.match(r"\s*", line).group(0)
            out += [indent + stub for stub in CODE_STUB.split("\n")]
        elif END in line:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


def has_solution_region(cell: nbformat.NotebookNode) -> bool:
    return cell.cell_type == "code" and BEGIN in cell.source


def is_check_cell(cell: nbformat.NotebookNode) -> bool:
    return EXERCISE_CHECK_TAG in cell.metadata.get("tags", [])


def annotate_nbgrader(nb: nbformat.NotebookNode, prefix: str, *, points: float = 1) -> nbformat.NotebookNode:
    """Give a solution notebook valid nbgrader metadata (in place, and returned): the k-th cell
    with a solution region becomes solution cell ``<prefix>-ex<k>``, the k-th ``exercise-check``
    cell the autograded test ``<prefix>-ex<k>-check`` worth ``points`` (existing points are kept).
    Every other cell loses stale nbgrader metadata."""
    n_solution = n_check = 0
    for cell in nb.cells:
        old = cell.metadata.get("nbgrader", {})
        if has_solution_region(cell):
            n_solution += 1
            cell.metadata["nbgrader"] = {"grade": False, "grade_id": f"{prefix}-ex{n_solution}",
                                         "locked": False, "schema_version": NBGRADER_SCHEMA,
                                         "solution": True, "task": False}
        elif is_check_cell(cell):
            n_check += 1
            cell.metadata["nbgrader"] = {"grade": True, "grade_id": f"{prefix}-ex{n_check}-check",
                                         "locked": True, "points": old.get("points", points),
                                         "schema_version": NBGRADER_SCHEMA, "solution": False,
                                         "task": False}
        else:
            cell.metadata.pop("nbgrader", None)
    return nb


def nbgrader_problems(nb: nbformat.NotebookNode) -> list[str]:
    """What is wrong with a solution notebook's nbgrader metadata (empty when it is valid)."""
    problems, ids = [], set()
    for i, cell in enumerate(nb.cells):
        meta = cell.metadata.get("nbgrader")
        where = f"cell {i}"
        if has_solution_region(cell) and not (meta and meta.get("solution")):
            problems.append(f"{where} has a solution region but no nbgrader `solution: true`")
        if is_check_cell(cell) and not (meta and meta.get("grade") and meta.get("locked")
                                        and float(meta.get("points", 0)) > 0):
            problems.append(f"{where} is an exercise check but not a locked, graded nbgrader test cell with points")
        if meta:
            if meta.get("schema_version") != NBGRADER_SCHEMA:
                problems.append(f"{where}: nbgrader schema_version must be {NBGRADER_SCHEMA}")
            gid = meta.get("grade_id")
            if not gid or not re.fullmatch(r"[A-Za-z0-9_-]+", gid):
                problems.append(f"{where}: grade_id {gid!r} must be letters, digits, '-' and '_'")
            elif gid in ids:
                problems.append(f"{where}: grade_id {gid!r} is used twice")
            ids.add(gid)
        if INSTRUCTOR_TAG in cell.metadata.get("tags", []) and meta:
            problems.append(f"{where} is tagged instructor (left out of the release) but has nbgrader metadata")
    return problems


def nbgrader_checksum(cell: nbformat.NotebookNode) -> str:
    """nbgrader's cell checksum (``nbgrader.utils.compute_checksum``): MD5 over source, cell type,
    the grade/solution/locked flags, the grade id and the points."""
    meta = cell.metadata["nbgrader"]
    grade, solution = bool(meta.get("grade")), bool(meta.get("solution"))
    locked = not solution and (grade or bool(meta.get("locked")))
    digest = hashlib.md5()
    for part in (cell.source, cell.cell_type, str(grade), str(solution), str(locked), meta["grade_id"]):
        digest.update(part.encode("utf-8"))
    if grade:
        digest.update(str(float(meta["points"])).encode())
    return digest.hexdigest()


def clear_outputs(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove outputs and execution counts (notebooks are stored without outputs)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    return nb


def student_notebook(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The student version of a solution notebook: what ``nbgrader generate_assignment`` releases
    (with :class:`labsupport.grading.DropInstructorCells`), plus a note that the file is generated."""
    nb = copy.deepcopy(solution)
    cells = []
    for cell in nb.cells:
        if INSTRUCTOR_TAG in cell.metadata.get("tags", []):
            continue
        meta = cell.metadata.get("nbgrader")
        if meta:
            if meta.get("solution"):  # nbgrader's LockCells, then ClearSolutions
                cell.metadata["deletable"] = False
                cell.source = strip_solutions(cell.source) if BEGIN in cell.source else CODE_STUB
            elif meta.get("grade") or meta.get("locked"):
                cell.metadata["deletable"] = False
                cell.metadata["editable"] = False
        elif cell.cell_type == "code" and BEGIN in cell.source:
            raise ValueError(f"solution region in a cell without nbgrader metadata:\n{cell.source[:200]}\n"
                             "Run `labsupport labs annotate` to add it.")
        cells.append(cell)
    nb.cells = cells
    clear_outputs(nb)
    for cell in nb.cells:  # nbgrader's ComputeChecksums, on the released source
        if "nbgrader" in cell.metadata:
            cell.metadata["nbgrader"]["checksum"] = nbgrader_checksum(cell)
            cell.metadata["nbgrader"]["cell_type"] = cell.cell_type
    nb.metadata["labsupport"] = {"generated_from": "solutions", "edit": "edit solutions/ and run "
                                 "`labsupport labs generate`; this file is overwritten"}
    return nb


def _dump(nb: nbformat.NotebookNode) -> bytes:
    return (nbformat.writes(nb) + "\n").encode()


@dataclass
class LabsStatus:
    written: list[Path]
    stale: list[Path]


def generate_labs(root: Path | None = None, *, check: bool = False) -> LabsStatus:
    """Write ``labs/<name>.ipynb`` for every ``solutions/<name>.ipynb``.

    With ``check=True`` nothing is written; the result lists the lab files that are missing or
    differ from what would be generated (stale), and labs without a solution.
    """
    root = repo_root() if root is None else Path(root)
    sol_dir, lab_dir = root / "solutions", root / "labs"
    if not sol_dir.is_dir():
        raise FileNotFoundError(f"no solutions/ folder under {root}")
    written, stale = [], []
    names = sorted(p.name for p in sol_dir.glob("*.ipynb"))
    for name in names:
        solution = nbformat.read(sol_dir / name, as_version=4)
        problems = nbgrader_problems(solution)
        if problems:
            raise ValueError(f"{sol_dir / name}: invalid nbgrader metadata:\n  " + "\n  ".join(problems)
                             + "\nRun `labsupport labs annotate` to (re)write it.")
        data = _dump(student_notebook(solution))
        target = lab_dir / name
        if target.exists() and target.read_bytes() == data:
            continue
        if check:
            stale.append(target)
        else:
            atomic_write_bytes(target, data)
            written.append(target)
    stale += [p for p in sorted(lab_dir.glob("*.ipynb")) if p.name not in names]
    return LabsStatus(written, stale)


def annotate_solutions(root: Path | None = None) -> list[Path]:
    """Rewrite the nbgrader metadata of every ``solutions/*.ipynb`` (grade ids from the file
    name); returns the notebooks that changed."""
    root = repo_root() if root is None else Path(root)
    changed = []
    for path in sorted((root / "solutions").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        before = _dump(nb)
        prefix = re.sub(r"[^A-Za-z0-9_-]", "-", path.stem)
        after = _dump(annotate_nbgrader(nb, prefix))
        if after != before:
            atomic_write_bytes(path, after)
            changed.append(path)
    return changed


def notebook_has_outputs(path: Path) -> bool:
    nb = nbformat.read(path, as_version=4)
    return any(c.cell_type == "code" and (c.outputs or c.execution_count) for c in nb.cells)


def cell_seconds(nb: nbformat.NotebookNode) -> list[tuple[int, float, str]]:
    """(cell index, seconds, first line of source) of each executed code cell, from the timing
    nbclient records in the cells' metadata (``execution``), slowest first."""
    times = []
    for i, cell in enumerate(nb.cells):
        stamps = cell.get("metadata", {}).get("execution", {})
        if cell.cell_type == "code" and "iopub.execute_input" in stamps and "shell.execute_reply" in stamps:
            start, end = (datetime.fromisoformat(stamps[k].replace("Z", "+00:00"))
                          for k in ("iopub.execute_input", "shell.execute_reply"))
            times.append((i, (end - start).total_seconds(), (cell.source.strip().splitlines() or [""])[0]))
    return sorted(times, key=lambda t: -t[1])


@dataclass
class RunResult:
    path: Path
    output: Path
    seconds: float
    errors: list[tuple[int, str, str]]  # (cell index, error name, cell tags)
    cells: list[tuple[int, float, str]]  # (cell index, seconds, first line), slowest first


def run_notebook(path: Path, output: Path, *, profile: str | None = None, timeout: int = 1800,
                 allow_errors: bool = False) -> RunResult:
    """Execute a notebook headless with nbclient and save the executed copy to ``output``.

    ``profile`` sets ``LABSUPPORT_PROFILE`` for the kernel (the parameters cell reads it).
    With ``allow_errors`` the run continues past failing cells and the errors are returned.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    env_backup = os.environ.get("LABSUPPORT_PROFILE")
    if profile is not None:
        os.environ["LABSUPPORT_PROFILE"] = profile
    start = time.perf_counter()
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
                                resources={"metadata": {"path": str(Path(path).parent)}})
        client.execute()
    except CellExecutionError:
        atomic_write_bytes(output, _dump(nb))  # keep the partial run for inspection
        raise
    finally:
        if profile is not None:
            if env_backup is None:
                os.environ.pop("LABSUPPORT_PROFILE", None)
            else:
                os.environ["LABSUPPORT_PROFILE"] = env_backup
    seconds = time.perf_counter() - start
    atomic_write_bytes(output, _dump(nb))
    return RunResult(Path(path), Path(output), seconds, notebook_errors(nb), cell_seconds(nb))


def notebook_errors(nb: nbformat.NotebookNode) -> list[tuple[int, str, str]]:
    """The errors an executed notebook shows: (cell index, error name, the cell's tags)."""
    return [(i, out.get("ename", ""), ",".join(cell.metadata.get("tags", [])))
            for i, cell in enumerate(nb.cells) for out in cell.get("outputs", [])
            if out.get("output_type") == "error"]


def unfinished_run_problems(student: nbformat.NotebookNode, errors: list[tuple[int, str, str]]) -> list[str]:
    """What is wrong with a run of an untouched student notebook: the only errors allowed are the
    ``NotImplementedError`` of each unfinished exercise, one in each exercise's check cell."""
    n_exercises = sum(c.source.count("raise NotImplementedError()") for c in student.cells
                      if c.cell_type == "code")
    problems = [f"cell {i}: unexpected {name} (tags: {tags or 'none'})" for i, name, tags in errors
                if not (name == "NotImplementedError" and EXERCISE_CHECK_TAG in tags.split(","))]
    if len(errors) != n_exercises:
        problems.append(f"{len(errors)} errors for {n_exercises} unfinished exercises: "
                        "every unfinished exercise should fail its check cell, and only it")
    return problems
