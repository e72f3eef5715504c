"""Start JupyterLab exactly as ``make lab`` does (``.venv/bin/labsupport lab``) for the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def labsupport_script() -> list[str]:
    """The console script ``make lab`` runs (``$(BIN)/labsupport``), or the module as a fallback."""
    script = Path(sys.executable).parent / "labsupport"
    return [str(script)] if script.exists() else [sys.executable, "-m", "labsupport"]


@dataclass
class Server:
    url: str
    token: str
    process: subprocess.Popen
    log: Path

    def get(self, path: str, timeout: float = 10) -> tuple[int, str]:
        sep = "&" if "?" in path else "?"
        with urllib.request.urlopen(f"{self.url}{path}{sep}token={self.token}", timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")


@contextlib.contextmanager
def running_lab(tmp: Path, *, env: dict[str, str] | None = None, prefix: list[str] = (),
                folder: Path | None = None, startup_timeout: float = 90) -> Iterator[Server]:
    """Run ``labsupport lab [folder] --port P`` (after ``prefix``, e.g. a privilege drop) until the
    server answers; stop it afterwards. A test that runs cells passes a ``folder`` of copies:
    JupyterLab autosaves open notebooks, and outputs must never land in the checkout's labs/."""
    port, token = free_port(), "labsupport-test-token"
    log = tmp / "jupyterlab.log"
    full_env = {**os.environ, "JUPYTER_TOKEN": token, "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
                "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTER_DATA_DIR": str(tmp / "data"),
                "PYTHONUNBUFFERED": "1"}
    full_env.pop("DISPLAY", None)  # a headless machine, like CI and most servers
    full_env.update(env or {})
    with open(log, "wb") as out:
        proc = subprocess.Popen([*prefix, *labsupport_script(), "lab", *([str(folder)] if folder else []),
                                 "--port", str(port)], cwd=ROOT,
                                env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", token, proc, log)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                server.get("/api/status", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not answer in {startup_timeout} s:\n"
                                       f"{log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
