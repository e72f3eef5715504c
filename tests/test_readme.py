"""The README's Python quickstart runs as written and shows a working backdoor."""

import re
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
