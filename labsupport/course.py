"""Course tooling: generate the student notebooks in ``labs/`` from ``solutions/`` and run
notebooks headless.

Rules (nbgrader style):

* In code cells, everything between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` is replaced by
  ``# YOUR CODE HERE`` and ``raise NotImplementedError()`` at the same indentation.
* Cells tagged ``instructor`` (assertions on the key numbers, used by CI) are left out.
* Outputs and execution counts are cleared; the generated notebook is marked as generated.
"""

from __future__ import annotations

import copy
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

from .io import atomic_write_bytes

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
INSTRUCTOR_TAG = "instructor"
EXERCISE_CHECK_TAG = "exercise-check"
_REGION = re.compile(r"^([ \t]*)" + re.escape(BEGIN) + r"[^\n]*\n.*?^[ \t]*" + re.escape(END) + r"[^\n]*$",
                     re.MULTILINE | re.DOTALL)


def repo_root() -> Path:
    """The course checkout (the folder holding ``solutions/`` and ``labs/``)."""
    env = os.environ.get("LABSUPPORT_REPO")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent
    return here if (here / "solutions").is_dir() else Path.cwd()


def strip_solutions(source: str) -> str:
    """Replace every solution region in ``source`` by a ``NotImplementedError`` stub."""
    if source.count(BEGIN) != source.count(END):
        raise ValueError(f"unbalanced solution markers ({source.count(BEGIN)} BEGIN, "
                         f"{source.count(END)} END) in cell:\n{source[:200]}")

    def stub(match: re.Match) -> str:
        indent = match.group(1)
        return f"{indent}# YOUR CODE HERE\n{indent}raise NotImplementedError()"

    return _REGION.sub(stub, source)


def clear_outputs(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove outputs and execution counts (notebooks are stored without outputs)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    return nb


def student_notebook(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The student version of a solution notebook."""
    nb = copy.deepcopy(solution)
    cells = []
    for cell in nb.cells:
        if INSTRUCTOR_TAG in cell.metadata.get("tags", []):
            continue
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source)
        cells.append(cell)
    nb.cells = cells
    nb.metadata["labsupport"] = {"generated_from": "solutions", "edit": "edit solutions/ and run "
                                 "`labsupport labs generate`; this file is overwritten"}
    return clear_outputs(nb)


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


def notebook_has_outputs(path: Path) -> bool:
    nb = nbformat.read(path, as_version=4)
    return any(c.cell_type == "code" and (c.outputs or c.execution_count) for c in nb.cells)


@dataclass
class RunResult:
    path: Path
    output: Path
    seconds: float
    errors: list[tuple[int, str, str]]  # (cell index, error name, cell tags)


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
    errors = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                errors.append((i, out.get("ename", ""), ",".join(cell.metadata.get("tags", []))))
    atomic_write_bytes(output, _dump(nb))
    return RunResult(Path(path), Path(output), seconds, errors)
