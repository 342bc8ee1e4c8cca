"""The live view in a real browser: JupyterLab, Debian's Chromium, Selenium.

A JupyterLab (from PyPI) is started on a free local port with a token in a
temporary directory; Chromium (headless, driven by Debian's
``chromium-driver``) opens a notebook and runs its cells: start 2 servers,
show ``%casa_status --live``, push a 5 s task to server 1 with ``-b`` (the
kernel is blocked meanwhile, so only the view's thread can move it). The
page must show server 1 busy, then idle, and the task stream must gain the
request's bar. Screenshots are saved in the test's temporary directory and
copied to ``/tmp/live-view-shots/``.

Skipped, saying why, without Chromium, its driver, Selenium or JupyterLab
(``make browser-packages`` installs the first two, as root).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from .conftest import VENV_BIN, wait_until

pytestmark = pytest.mark.needs_mpi

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SHOTS = Path("/tmp/live-view-shots")
#: Seconds for JupyterLab to start, and for the kernel to start 2 servers (2 shared cores).
START = 120
REPOSITORY = Path(__file__).resolve().parent.parent

CELLS = [
    "%load_ext casa_magics",
    "%casa_cluster start -n 2",
    "%casa_status --live --window 60",
    "%casa_push -b -t 1 import time; time.sleep(5)",
]


def _missing() -> str | None:
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "Debian's chromium and chromium-driver are not installed (make browser-packages, as root)"
    for module, extra in (("selenium", "test"), ("jupyterlab", "notebook"), ("ipywidgets", "notebook")):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (the {extra} extra: make install)"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _notebook(path: Path) -> None:
    cells = [
        {"cell_type": "code", "metadata": {}, "source": source, "outputs": [], "execution_count": None}
        for source in CELLS
    ]
    notebook = {
        "cells": cells,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook))


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab on a free port with a token, in ``tmp_path``; killed at the end. Yields its base URL and token."""
    port, token = _free_port(), secrets.token_hex(16)
    home = tmp_path / "jupyter"
    environment = {
        **os.environ,
        "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])),
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "IPYTHONDIR": str(home / "ipython"),
        "CASA_MAGICS_RUN_DIR": str(tmp_path / "run"),
    }
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _notebook(notebooks / "live.ipynb")
    log = (tmp_path / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={notebooks}", "--ServerApp.allow_root=True",
         "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None", "--ServerApp.port_retries=0"],
        env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert server.poll() is None, (tmp_path / "jupyterlab.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as reply:
                return reply.status == 200
        except OSError:
            return False

    try:
        wait_until(answers, timeout=START, message="JupyterLab answering")
        yield base, token
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server shuts its kernel down, whose session stops its cluster
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()


@pytest.fixture
def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(START)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _count(driver, selector: str) -> int:
    return driver.execute_script("return document.querySelectorAll(arguments[0]).length", selector)


def _shoot(driver, tmp_path: Path, name: str) -> Path:
    """Save a screenshot of the live view's output (of the page if it is not there) under ``tmp_path``."""
    path = tmp_path / f"{name}.png"
    elements = driver.find_elements("css selector", ".casa-live-widget")
    if elements:
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", elements[0])
        elements[0].screenshot(str(path))
    else:
        driver.save_screenshot(str(path))
    return path


def test_the_live_view_in_jupyterlab_follows_a_task_on_server_1(jupyterlab, chromium, tmp_path):
    base, token = jupyterlab
    driver = chromium
    driver.get(f"{base}/lab/tree/live.ipynb?token={token}")
    wait_until(
        lambda: driver.execute_script(
            "const app = window.jupyterapp; const panel = app && app.shell.currentWidget;"
            "return !!(panel && panel.sessionContext && panel.sessionContext.session"
            " && panel.sessionContext.session.kernel && panel.content && panel.content.widgets.length === 4);"
        ),
        timeout=START, message="the notebook open with a kernel",
    )
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    shots = []
    row = '.casa-live tr[data-server="1"][data-state="{}"]'
    try:
        wait_until(lambda: _count(driver, ".casa-live-widget .casa-live tr[data-server]") == 2,
                   timeout=START, message="the live view's widget with two servers")
        shots.append(_shoot(driver, tmp_path, "1-shown"))
        bars_before = _count(driver, ".casa-live g.casa-live-bar")
        wait_until(lambda: _count(driver, row.format("busy")), timeout=60, message="server 1 shown busy")
        shots.append(_shoot(driver, tmp_path, "2-server-1-busy"))
        assert _count(driver, '.casa-live g.casa-live-bar[data-server="1"][data-outcome="running"]') == 1
        # The kernel is blocked in %casa_push -b: this page moves only through the view's thread.
        wait_until(lambda: _count(driver, row.format("idle")), timeout=60, message="server 1 shown idle again")
        wait_until(lambda: _count(driver, '.casa-live g.casa-live-bar[data-server="1"][data-outcome="done"]'),
                   timeout=30, message="the task's bar, done")
        shots.append(_shoot(driver, tmp_path, "3-server-1-idle"))
        assert _count(driver, ".casa-live g.casa-live-bar") > bars_before
        tooltip = driver.execute_script(
            "return document.querySelector('.casa-live g.casa-live-bar[data-outcome=\"done\"] title').textContent"
        )
        assert tooltip.startswith("request ") and "time.sleep(5)" in tooltip and "done" in tooltip
        assert re.search(r"\(\d+\.\d s\)", tooltip), tooltip  # how long it ran, shown (not asserted: timing)
        assert driver.execute_script(
            "return document.querySelector('.casa-live [data-total=\"done\"] b').textContent"
        ) != "0"
    finally:
        shots.append(_shoot(driver, tmp_path, "4-last"))
        SHOTS.mkdir(exist_ok=True)
        for shot in shots:
            shutil.copy(shot, SHOTS / shot.name)
        print(f"screenshots in {tmp_path} and {SHOTS}")
        driver.execute_script(  # stop the cluster from the kernel, as a user would
            "const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;"
            "window.casaStopped = false;"
            "kernel.requestExecute({code: '%casa_cluster stop'}).done.then(() => { window.casaStopped = true; });"
        )
        wait_until(lambda: driver.execute_script("return window.casaStopped"), timeout=60, message="the cluster stopped")


if (_why := _missing()) is not None:
    pytestmark = [pytestmark, pytest.mark.skip(reason=_why)]
