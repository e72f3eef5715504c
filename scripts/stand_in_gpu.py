"""Run solution notebooks (quick profile) on a stand-in GPU: the notebooks' GPU path on a CPU-only machine.

Every kernel starts under ``tests/fakecuda.py``'s :func:`fake_cuda`: ``torch.cuda.is_available()``
is True, so the notebooks and ``labsupport`` pick "cuda" as on a GPU, and any op that mixes a
device tensor with a CPU tensor raises as it would there. The SmolLM2 section of Lab 3 is left out
(a SmolLM2 tuning on the CPU takes hours; ``tests/test_llm_smol.py`` runs that section's code on
the stand-in with a few rows). What this cannot check: CUDA's numerics and speed.

    python scripts/stand_in_gpu.py [--models DIR] [NOTEBOOK ...]   # default: every notebook in solutions/

By default the models go to a fresh model cache, so every one is trained on the stand-in device.
``--models DIR`` uses that cache instead: models already in it (the same quick-profile models
trained on the CPU) are loaded onto the device rather than trained again.

Exit status 1 if a notebook fails; then the executed copies (with the traceback) are kept.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STARTUP = f"""\
import sys
sys.path.insert(0, {str(ROOT / "tests")!r})
from fakecuda import fake_cuda
_STAND_IN = fake_cuda()
_STAND_IN.__enter__()        # for the whole kernel
import labsupport.llm.smol as _smol
_smol.status = lambda: "left out on the stand-in GPU (hours on a CPU; tests/test_llm_smol.py covers it)"
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="model cache to use (default: a fresh one)")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook in solutions/")
    args = parser.parse_args()
    notebooks = args.notebooks or sorted((ROOT / "solutions").glob("*.ipynb"))
    work = Path(tempfile.mkdtemp(prefix="stand-in-gpu-"))
    startup = work / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-stand-in-gpu.py").write_text(STARTUP)
    env = dict(os.environ, IPYTHONDIR=str(work / "ipython"), LABSUPPORT_PROFILE="quick",
               LABSUPPORT_MODELS=str(args.models or work / "models"))
    failed = []
    for nb in notebooks:
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                              "--ExecutePreprocessor.timeout=3600", "--output-dir", str(work), str(nb)],
                             env=env, capture_output=True, text=True)
        took = time.perf_counter() - start
        if run.returncode:
            failed.append(nb.name)
            last = [line for line in run.stderr.splitlines() if line.strip()][-3:]
            print(f"FAIL {nb.name} ({took:.0f} s): {work / nb.name}\n    " + "\n    ".join(last))
        else:
            print(f"ok   {nb.name} ({took:.0f} s)")
    if not failed:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
