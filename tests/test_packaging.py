"""environment.yml (conda) stays in step with pyproject.toml (pip): the same packages with the same
version ranges, so both setups build the same course."""

import re
from pathlib import Path

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
