"""Pack what the GPU checks need for a bare, offline GPU machine (developers' tool).

The course's GPU-only checks (Neural Cleanse's batched speed-up, the SmolLM2 efficacy test, the
notebooks' ``gpu`` profile) run on a lent machine that has PyTorch, transformers and the
scientific stack but no Jupyter kernel stack, no network, and takes at most 64 MiB per call.
This script fills the git-ignored ``.device/`` folder with:

* ``whl/``: the wheels of every package ``labsupport``, ``nbclient``, ``ipykernel``,
  ``ipywidgets``, ``gguf``, Flower and picklescan need that the machine's image lacks (:data:`ON_DEVICE`), for
  CPython 3.12 on x86-64 Linux, at the versions installed here;
* ``data.tar``: Fashion-MNIST (the Debian package's gzip files) and the VADER sentences;
* ``gguf.1``, ``gguf.2``: SmolLM2's 98 MB model file in two halves (no call carries it whole).

It then prints the three device calls: two carry a half of the model file each, the third the
rest, and runs ``scripts/device_check.sh``. Run here, with the course's ``.venv`` set up and its
data prepared (``make test`` does both):

    .venv/bin/python scripts/device_pack.py
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".device"
#: the roots whose dependency closure must be importable there
ROOTS = ("poisoning-labs", "nbclient", "ipykernel", "ipywidgets", "gguf", "flwr", "picklescan")
#: never carried: the course's own package, PyTorch (the machine's CUDA build stays), and what
#: only the local setup uses (JupyterLab's server, nbgrader, Playwright, ruff)
SKIP = {"poisoning-labs", "torch", "torchvision", "jupyterlab", "nbgrader", "playwright", "ruff",
        "nbval", "triton", "torchaudio"}
#: needed by the packages' metadata, not by what the checks import (checked here with each one
#: blocked: Flower's strategies without its server and CLI parts, a kernel without its debugger
#: or the classic notebook's widget extension); left out to fit the 64 MiB a call may carry
UNUSED = {"uv", "sqlalchemy", "alembic", "mako", "fastapi", "starlette", "uvicorn", "pydantic", "pydantic-core",
          "annotated-types", "typing-inspection", "grpcio-health-checking", "debugpy", "widgetsnbextension"}
#: the packages of the lent machines' image ('cuda', as read on 2026-11-17: the device tool's KINDS.md)
ON_DEVICE = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision
tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
LIMIT = 60 * 2**20   # what one call may carry, less room for the working tree


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: tuple[str, ...], skip: set[str]) -> dict[str, str]:
    """{name: installed version} of ``roots`` and everything they need here (no extras), not
    looking into the packages in ``skip``."""
    seen: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = norm(todo.pop())
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue   # an optional or platform-specific need not installed here
        seen[name] = dist.version
        if name in skip and name not in roots:
            continue
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            todo.append(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0])
    return seen


def carried() -> dict[str, str]:
    """{name: version} of the wheels to carry: the closure of :data:`ROOTS` less what is skipped,
    unused or already on the machine."""
    left_out = SKIP | UNUSED
    return {n: v for n, v in closure(ROOTS, left_out).items() if n not in left_out | ON_DEVICE}


def download(pkgs: dict[str, str], dest: Path, python: str) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           python, "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(dest)]
    subprocess.run(cmd + [f"{n}=={v}" for n, v in sorted(pkgs.items())], check=True)


def main() -> int:
    from labsupport.llm import smol
    from labsupport.paths import data_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python-version", default="3.12", help="the machine's Python (default 3.12; 3.11 to try "
                    "the wheels here in a bare virtual environment)")
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    need = carried()
    whl = OUT / "whl"
    shutil.rmtree(whl, ignore_errors=True)
    whl.mkdir()
    print(f"wheels: {', '.join(f'{n} {v}' for n, v in sorted(need.items()))}")
    download(need, whl, args.python_version)

    debian = Path("/usr/share/datasets/fashion-mnist")
    vader = data_root() / "vader"
    if not debian.is_dir() or not vader.is_dir():
        sys.exit(f"need {debian} and {vader}: run `make test` (or scripts/setup.sh) first")
    with tarfile.open(OUT / "data.tar", "w") as tar:
        tar.add(debian, "fashion-mnist")
        tar.add(vader, "vader")

    gguf = smol.gguf_path()   # verified against its SHA-256
    blob = gguf.read_bytes()
    half = len(blob) // 2
    (OUT / "gguf.1").write_bytes(blob[:half])
    (OUT / "gguf.2").write_bytes(blob[half:])
    (OUT / "gguf.sha256").write_text(hashlib.sha256(blob).hexdigest() + "\n")

    sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*")) if p.is_dir() else p.stat().st_size
             for p in OUT.iterdir()}
    third = sizes["whl"] + sizes["data.tar"] + sizes["gguf.sha256"]
    for name, size in sorted(sizes.items()):
        print(f"  .device/{name}: {size / 2**20:.1f} MiB")
    if max(sizes["gguf.1"], sizes["gguf.2"], third) > LIMIT:
        sys.exit("a call would carry more than 60 MiB: split further")
    print("\nThe device calls, one right after the other (the machine stays warm 30 s; what a call carried\n"
          "stays there for the next):\n"
          '  1. carry [".device/gguf.1"]            command "true"\n'
          '  2. carry [".device/gguf.2"]            command "true"\n'
          '  3. carry [".device/whl", ".device/data.tar", ".device/gguf.sha256"]\n'
          '     command "bash scripts/device_check.sh all"   (stages: setup nc smol lab3 lab4 lab2 lab1)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
