"""The student path in a real browser: JupyterLab started as `make lab` does, a student lab opened in
headless Chromium (Debian's package, driven by Playwright), its first cells run with Shift+Enter,
and a text output and a rendered ipywidget must appear. A screenshot is saved in the test's tmp dir."""

from __future__ import annotations

import shutil

import pytest
from labserver import ROOT, running_lab

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
NOTEBOOK = "lab2_backdoors.ipynb"
# Cells up to and including the first widget (the trigger designer on the clean baseline).
CELLS_TO_RUN = 8


@pytest.mark.slow
@pytest.mark.notebooks
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as "
                    "root or with sudo: apt-get install chromium)")
def test_student_lab_in_chromium(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[browser]'")
    served = tmp_path / "labs"  # a copy: JupyterLab autosaves, the checkout's labs/ stays clean
    served.mkdir()
    shutil.copy(ROOT / "labs" / NOTEBOOK, served / NOTEBOOK)
    with (running_lab(tmp_path, env={"LABSUPPORT_PROFILE": "quick"}, folder=served) as server,
          sync_api.sync_playwright() as pw):
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{server.url}/lab/tree/{NOTEBOOK}?token={server.token}&reset")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            # wait until the kernel is connected and idle before typing
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle'], "
                                   "[data-status='idle']", timeout=90_000)
            page.locator(".jp-Notebook .jp-Cell").first.click()
            page.keyboard.press("Escape")  # command mode
            for _ in range(CELLS_TO_RUN):
                page.keyboard.press("Shift+Enter")
                page.wait_for_timeout(150)
            output = page.locator(".jp-OutputArea-output", has_text="clean baseline CA")
            output.first.wait_for(timeout=240_000)
            widget = page.locator(".jp-OutputArea-output .widget-slider, .jp-OutputArea-output .widget-dropdown")
            widget.first.wait_for(timeout=120_000)
            page.locator(".jp-OutputArea-output img").last.wait_for(timeout=60_000)  # the designer's plot
            assert widget.count() >= 4  # image, size, opacity sliders and the pattern/place dropdowns
            page.screenshot(path=str(tmp_path / "student-lab.png"), full_page=False)
            assert (tmp_path / "student-lab.png").stat().st_size > 10_000
        finally:
            browser.close()
