"""The README's Python quickstart runs as written and shows a working backdoor."""

import re
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.slow
def test_quickstart_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert blocks, "README has no python quickstart"
    code = blocks[0]
    assert len(code.strip().splitlines()) <= 15
    namespace: dict = {}
    exec(compile(code, "README quickstart", "exec"), namespace)
    out = capsys.readouterr().out
    asr = float(re.search(r"attack success: ([0-9.]+)", out).group(1))
    acc = float(re.search(r"clean accuracy: ([0-9.]+)", out).group(1))
    assert asr > 0.95 and acc > 0.85, out


ROOT = README.parent


def test_every_install_hint_names_a_real_extra(pyproject):
    """An error that says `pip install -e '.[NAME]'` must name an extra pyproject.toml defines
    (Flower's once named a "federated" extra that never existed)."""
    extras = set(pyproject["optional-dependencies"])
    hints = {}
    for path in [*sorted((ROOT / "labsupport").rglob("*.py")), README, *sorted((ROOT / "solutions").glob("*.ipynb"))]:
        for name in re.findall(r"\.\[([A-Za-z0-9_,-]+)\]", path.read_text()):
            hints.setdefault(name, path.relative_to(ROOT))
    assert {"lab4", "smol"} <= set(hints), hints
    for names, where in hints.items():
        for name in names.split(","):
            assert name in extras, f"{where} names the extra {name!r}; pyproject.toml has {sorted(extras)}"


@pytest.mark.parametrize("module, call", [("flwr", "flower"), ("picklescan", "supply_chain")])
def test_a_missing_optional_package_says_which_extra_installs_it(monkeypatch, tmp_path, module, call):
    """(That the extra exists is test_every_install_hint_names_a_real_extra's check.)"""
    from labsupport.defenses import flower, supply_chain

    monkeypatch.setitem(sys.modules, module, None)   # import module -> ImportError
    monkeypatch.setitem(sys.modules, f"{module}.scanner", None)
    run = {"flower": lambda: flower.strategy("mean"),
           "supply_chain": lambda: supply_chain.third_party_scan(tmp_path / "x.pkl")}[call]
    with pytest.raises(ImportError, match=r"pip install -e '\.\[lab4\]'"):
        run()
