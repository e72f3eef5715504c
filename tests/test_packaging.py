"""environment.yml (conda) stays in step with pyproject.toml (pip): the same packages with the same
version ranges, so both setups build the same course; the package imports lazily."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}          # the same package under conda-forge's name
NOT_IN_CONDA = {"smol"}                       # an optional GPU extra, named in a comment there


def _spec(req: str) -> tuple[str, str]:
    req = req.split(";")[0].split("#")[0].strip()
    name, spec = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", req).groups()
    return name.lower(), spec.replace(" ", "")


def test_environment_yml_matches_pyproject(pyproject):
    wanted = dict(map(_spec, pyproject["dependencies"]))
    for extra, reqs in pyproject["optional-dependencies"].items():
        if extra not in NOT_IN_CONDA:
            wanted.update(map(_spec, reqs))
    conda = {}
    text = (ROOT / "environment.yml").read_text()
    for line in text[text.index("\ndependencies:"):].splitlines():
        m = re.match(r"(?:  |      )- ([A-Za-z][\w.-]*)(.*)", line)   # conda's list and its pip: list
        if m and m.group(1) not in ("pip", "python"):
            conda[m.group(1).lower()] = m.group(2).split("#")[0].replace(" ", "")
    expected = {CONDA_NAMES.get(n, n): s for n, s in wanted.items()}
    assert conda == expected, {"only in environment.yml": sorted(set(conda) - set(expected)),
                               "only in pyproject.toml": sorted(set(expected) - set(conda)),
                               "different ranges": sorted(n for n in set(conda) & set(expected)
                                                          if conda[n] != expected[n])}


def test_import_and_the_command_line_load_no_heavy_module():
    """``import labsupport`` and ``labsupport --help`` stay light (PEP 562 lazy names): torch,
    scikit-learn and matplotlib load with the first name that needs them."""
    import subprocess
    import sys

    code = ("import sys, contextlib, io, labsupport, labsupport.cli\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    labsupport.cli.main(['--help'])\n"
            "print(sorted(m for m in ('torch', 'sklearn', 'matplotlib', 'scipy', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_every_public_name_resolves_and_is_listed():
    import labsupport as ls

    for name in ls.__all__:
        assert getattr(ls, name) is not None, name
    assert set(ls.__all__) <= set(dir(ls))
    assert ls.badnets.__module__ == "labsupport.backdoor" and ls.io.__name__ == "labsupport.io"
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        _ = ls.no_such_name
