"""`make lab` (= `labsupport lab`) starts JupyterLab on a fresh, headless machine, as root or not."""

import os
import shutil
import subprocess
import sys

import pytest
from labserver import ROOT, running_lab

from labsupport import cli


def test_command_adds_allow_root_only_for_root(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert "--allow-root" in cli.jupyter_lab_command(tmp_path, open_browser=True)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "--allow-root" not in cli.jupyter_lab_command(tmp_path, open_browser=True)


def test_no_browser_on_a_headless_machine(monkeypatch, tmp_path):
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    assert not cli.browser_available()
    assert "--no-browser" in cli.jupyter_lab_command(tmp_path)


def test_missing_folder_is_a_clear_error(capsys, tmp_path):
    assert cli.main(["lab", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_makefile_runs_the_lab_command():
    recipe = (ROOT / "Makefile").read_text()
    assert "$(BIN)/labsupport lab\n" in recipe


@pytest.mark.slow
def test_lab_page_served(tmp_path):
    """Start JupyterLab exactly as `make lab` does and fetch the lab page and a student notebook."""
    with running_lab(tmp_path) as server:
        status, page = server.get("/lab")
        assert status == 200 and "JupyterLab" in page
        status, body = server.get("/api/contents/lab2_backdoors.ipynb?content=0")
        assert status == 200 and '"type": "notebook"' in body.replace('":"', '": "')
    log = server.log.read_text()
    first = log.splitlines()[0]
    assert first.startswith("starting JupyterLab") and ("--allow-root" in first) == (os.geteuid() == 0)
    assert "--no-browser" in first and "?token=" in log  # the URL a user without a browser opens


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to start the server as an ordinary user")
def test_lab_page_served_as_normal_user(tmp_path):
    """The same command run by an unprivileged user (uid/gid 65534) serves the page too."""
    tmp_path.chmod(0o777)
    home = tmp_path / "home"
    home.mkdir(mode=0o777)
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    reexec = "import os, sys; os.execv(sys.executable, [sys.executable, '-c', 'import jupyterlab'])"
    probe = subprocess.run([*drop, sys.executable, "-c", reexec], capture_output=True, env={"HOME": str(home)})
    if probe.returncode != 0:
        pytest.skip("an unprivileged user cannot run this environment's Python here (e.g. it lives "
                    "under /root); the --allow-root logic is covered by test_command_adds_allow_root_only_for_root")
    with running_lab(tmp_path, env={"HOME": str(home)}, prefix=drop) as server:
        status, page = server.get("/lab")
        assert status == 200 and "JupyterLab" in page
    first = server.log.read_text().splitlines()[0]
    assert first.startswith("starting JupyterLab") and "--allow-root" not in first
