"""Student notebooks run end to end (quick profile); the only errors allowed are the
NotImplementedError of unfinished exercises, raised in their check cells. The solution notebooks
run under nbval (`pytest solutions --nbval-lax`, see the Makefile) in the full profile.

Where nbgrader is installed (the `grading` extra, as in CI), the same run is the untouched
submission of `test_grading.py::test_nbgrader_round_trip`, which asserts the same and its score;
this test runs each notebook itself only where nbgrader is absent, so CI runs it once.

Lab 2's solution notebook also runs on the stand-in GPU here (``scripts/stand_in_gpu.py``)."""

import importlib.util
import os
import subprocess
import sys
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


@pytest.mark.notebooks
def test_lab2_notebook_runs_on_the_stand_in_gpu():
    """Lab 2's notebook moves tensors itself (triggers shown for a model on the device); the other
    labs' notebooks only call functions that tests/test_gpu_path.py runs on the stand-in. All four
    pass scripts/stand_in_gpu.py (BENCHMARKS.md).

    It uses the suite's model cache: in `make test` this file runs after test_grading.py, whose
    round trip has trained Lab 2's quick-profile models on the CPU, so the notebook loads them onto
    the (stand-in) device, ~90 s where training them again there took ~190 s on a 2-core AVX2 CPU.
    Training on the device is checked in test_gpu_path.py (weights that agree with the CPU run)."""
    models = os.environ.get("LABSUPPORT_MODELS")
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "stand_in_gpu.py"),
                          *(["--models", models] if models else []),
                          str(ROOT / "solutions" / "lab2_backdoors.ipynb")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("ok   lab2_backdoors.ipynb"), run.stdout
