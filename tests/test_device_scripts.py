"""The developers' GPU-check tools (scripts/device_pack.py, scripts/device_check.sh): what they
would carry to a bare GPU machine. Their run there needs a GPU; here: the choice of wheels and the
shell script's syntax."""

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pack():
    spec = importlib.util.spec_from_file_location("device_pack", ROOT / "scripts" / "device_pack.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_closure_follows_requirements_and_stops_at_skipped_packages(pack):
    full = pack.closure(("nbclient",), set())
    assert {"nbclient", "jupyter-client", "nbformat", "traitlets", "pyzmq"} <= set(full)
    cut = pack.closure(("nbclient",), {"jupyter-client"})
    assert "jupyter-client" in cut and "pyzmq" not in cut   # pyzmq comes only through jupyter-client


def test_the_carried_wheels_are_the_kernel_stack_not_the_machines_own(pack):
    need = set(pack.carried())
    assert {"nbclient", "ipykernel", "ipython", "gguf", "flwr", "picklescan"} <= need
    # PyTorch, NumPy and the rest of the scientific stack stay the machine's (its CUDA build)
    assert not need & {"torch", "numpy", "scipy", "scikit-learn", "transformers", "matplotlib", "tokenizers"}
    assert not need & {"jupyterlab", "nbgrader", "uv", "debugpy"}


def test_the_check_script_parses():
    bash = shutil.which("bash")
    assert bash
    res = subprocess.run([bash, "-n", str(ROOT / "scripts" / "device_check.sh")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
