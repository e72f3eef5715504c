"""The code style the project holds itself to: ruff with the settings in pyproject.toml (pyflakes,
pycodestyle, bugbear, import order, pyupgrade; lines up to 120 characters) on the package, the
tests, the benchmarks and the solution notebooks. ``ruff check --fix .``
mends most findings; ``ruff check .`` lists them."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is missing: it comes with the test extra (make test, or pip install -e '.[test]')"
    out = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", "."], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"ruff check found problems (ruff check --fix . mends most):\n{out.stdout}{out.stderr}"
