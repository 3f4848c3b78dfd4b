"""JupyterLab in a headless Chromium, driven the way a user drives it (menus, the keyboard).

:class:`Lab` starts a JupyterLab server on 127.0.0.1 (a token, a temporary root, its own
settings, workspaces and runtime folders, so nothing of the user's leaks in and nothing is
left behind); :class:`Page` is one browser tab on it. Every wait polls a condition with a
generous deadline (a loaded 2-core machine is slow, never wrong), none is a bare sleep.

Used by ``test_jupyterlab.py``; also runnable by hand to look at the notebooks::

    python tests/paper/labdriver.py notebooks/explore.ipynb shot.png
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parents[2]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVERS = ("chromedriver", "chromium-driver")


def find_browser() -> tuple[str, str] | str:
    """(browser, driver) executables, or the reason why there are none."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium, or the dev extras)"
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    driver = next((shutil.which(d) for d in DRIVERS if shutil.which(d)), None)
    if browser is None or driver is None:
        return ("no Chromium and chromedriver on PATH (Debian: apt-get install chromium "
                "chromium-driver; .ci/run installs them)")
    return browser, driver


def wait_for(condition: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.25) -> Any:
    """Poll ``condition`` until it returns something true; its value, else TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(interval)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server on ``root``; its kernels import this checkout's clipkit."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root, self.log = Path(root), Path(log)
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._home = Path(tempfile.mkdtemp(prefix="clipkit-lab-"))
        self._proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(CHECKOUT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))  # as sweeps do for kernels
        for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                         ("JUPYTER_RUNTIME_DIR", "runtime"),
                         ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                         ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
                         ("IPYTHONDIR", "ipython"), ("MPLCONFIGDIR", "mpl")):
            env[var] = str(self._home / sub)
        env["CLIPKIT_RUNS"] = str(self._home / "runs")  # notebooks' results stay out of runs/
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def _settings(self) -> None:
        """No news or update checks (no network here; their pop-up covers the page)."""
        folder = self._home / "settings" / "@jupyterlab" / "apputils-extension"
        folder.mkdir(parents=True)
        (folder / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))

    def start(self, timeout: float = 120) -> Lab:
        self._settings()
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
               f"--port={self.port}", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={self.root}", "--ServerApp.open_browser=False",
               "--LabApp.news_url=", "--ServerApp.disable_check_xsrf=False",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")  # CI runs as root
        with open(self.log, "w") as fh:
            self._proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                          env=self.env(), cwd=self.root)

        def up() -> bool:
            if self._proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}",
                                            timeout=2):
                    return True
            except OSError:
                return False

        wait_for(up, timeout, "the JupyterLab server", interval=0.5)
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()  # the server shuts its kernels down
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        shutil.rmtree(self._home, ignore_errors=True)


def chrome(browser: str, driver: str, profile: Path, size: tuple[int, int] = (1400, 1000)):
    """A headless Chromium that never reaches for the network (none here) by itself."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"):
        opts.add_argument(arg)
    opts.binary_location = browser
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    drv.set_script_timeout(30)
    return drv


#: the notebook in the current tab (other open notebooks are hidden panels)
NB = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"
_PROMPTS = f"Array.from(document.querySelectorAll('{NB} .jp-InputPrompt'))"


class Page:
    """One notebook open in JupyterLab, with what a user sees and does."""

    def __init__(self, drv, lab: Lab) -> None:
        self.drv, self.lab = drv, lab

    # ---------------------------------------------------------------- looking
    def js(self, script: str, *args: Any) -> Any:
        return self.drv.execute_script(script, *args)

    def kernel_status(self) -> str:
        """The kernel's state as the notebook's toolbar indicator says (idle, busy, ...)."""
        return self.js("""
            const el = document.querySelector(
              '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator');
            return el ? (el.getAttribute('data-status') || '') : '';""")

    def prompts(self) -> list[str]:
        return self.js(f"return {_PROMPTS}.map(p => p.textContent.trim());")

    def busy(self) -> bool:
        return any("*" in p for p in self.prompts()) or self.kernel_status() != "idle"

    def outputs(self, mime: str) -> list[str]:
        """The text of every output cell area rendered with this MIME type."""
        return self.js("""
            return Array.from(document.querySelectorAll(
              `${arguments[1]} .jp-OutputArea-output[data-mime-type="${arguments[0]}"]`))
              .map(e => e.textContent);""", mime, NB)

    def errors(self) -> list[str]:
        """Error and stderr outputs of the cells (JupyterLab renders both as stderr)."""
        return self.outputs("application/vnd.jupyter.stderr")

    def dirty(self) -> bool:
        """Whether the notebook's tab is marked as having unsaved changes."""
        return bool(self.js(
            "return document.querySelector('.lm-TabBar-tab.jp-mod-current.jp-mod-dirty')"
            " !== null;"))

    def count(self, css: str) -> int:
        return int(self.js("return document.querySelectorAll(arguments[0]).length;", css))

    def images(self) -> list[str]:
        """The src of every image output (PNG figures), in page order."""
        return self.js("""return Array.from(document.querySelectorAll(
            arguments[0] + ' .jp-OutputArea-output img')).map(i => i.getAttribute('src'));""",
                       NB)

    def log_messages(self) -> int:
        """Messages in JupyterLab's log console (kernel errors from widget callbacks go
        there, not into a cell); the count its status-bar item shows, else 0."""
        text = self.js("""const el = document.querySelector('.jp-LogConsoleStatusItem');
                          return el ? el.textContent : '';""")
        digits = "".join(ch for ch in text if ch.isdigit())
        return int(digits) if digits else 0

    # ---------------------------------------------------------------- doing
    def open(self, path: str, timeout: float = 120) -> Page:
        # ?reset: a workspace with only this notebook open (none restored from before)
        self.drv.get(f"{self.lab.url}/lab/tree/{path}?reset&token={self.lab.token}")
        wait_for(lambda: self.js(f"return document.querySelector('{NB} .jp-Cell')"),
                 timeout, f"{path} to open")
        wait_for(lambda: self.kernel_status() == "idle", timeout, "the kernel to start")
        return self

    def menu(self, menu: str, command: str) -> None:
        """Click ``menu`` in the menu bar, then its item with ``data-command`` ``command``."""
        from selenium.webdriver.common.by import By

        def open_menu():
            for el in self.drv.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel"):
                if el.text == menu:
                    el.click()
                    return True
            return False

        wait_for(open_menu, 30, f"the {menu} menu")
        item = wait_for(lambda: self.drv.find_elements(
            By.CSS_SELECTOR, f'.lm-Menu-item[data-command="{command}"]'), 30, command)
        item[0].click()

    def wait_idle(self, timeout: float = 300, settle: float = 1.0) -> None:
        """Until no cell is queued or running and the kernel has been idle ``settle`` s."""
        since = [None]

        def settled() -> bool:
            if self.busy():
                since[0] = None
                return False
            since[0] = since[0] or time.monotonic()
            return time.monotonic() - since[0] >= settle

        wait_for(settled, timeout, "the cells to finish")

    def run_all(self, timeout: float = 300) -> None:
        self.menu("Run", "runmenu:run-all")
        wait_for(lambda: self.busy() or self.count(f"{NB} .jp-OutputArea-output"),
                 60, "Run All to start")
        self.wait_idle(timeout)

    def cell_index(self, text: str) -> int:
        """The index of the first code cell whose source contains ``text``."""
        i = self.js("""
            const cells = Array.from(document.querySelectorAll(arguments[1] + ' .jp-Cell'));
            return cells.findIndex(c => c.classList.contains('jp-CodeCell') &&
              c.querySelector('.cm-content').textContent.includes(arguments[0]));""", text, NB)
        if i < 0:
            raise LookupError(f"no code cell contains {text!r}")
        return int(i)

    def edit_line(self, starts_with: str, new_line: str) -> None:
        """Replace the editor line that starts with ``starts_with`` by typing ``new_line``
        (click the line, select it with the keyboard, type), as a user edits a value."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        lines = [el for el in self.drv.find_elements(By.CSS_SELECTOR, f"{NB} .cm-line")
                 if el.text.startswith(starts_with)]
        if not lines:
            raise LookupError(f"no editor line starts with {starts_with!r}")
        self.drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", lines[0])
        lines[0].click()
        chain = ActionChains(self.drv).send_keys(Keys.END).key_down(Keys.SHIFT)
        chain.send_keys(Keys.HOME).key_up(Keys.SHIFT).send_keys(new_line).perform()
        wait_for(lambda: any(el.text == new_line for el in self.drv.find_elements(
            By.CSS_SELECTOR, f"{NB} .cm-line")), 10, f"the line {new_line!r}")

    def run_from_here(self, timeout: float = 300) -> None:
        """Run the cell with the cursor and every cell below it (Run menu)."""
        self.menu("Run", "notebook:run-all-below")
        wait_for(lambda: self.busy(), 60, "the cells to start")
        self.wait_idle(timeout)

    def screenshot(self, path: str | os.PathLike[str]) -> None:
        self.drv.save_screenshot(str(path))


@contextlib.contextmanager
def session(root: Path, work: Path) -> Iterator[Page]:
    """A JupyterLab on ``root`` and a headless Chromium on it; ``work`` holds their logs."""
    found = find_browser()
    if isinstance(found, str):
        raise RuntimeError(found)
    lab = Lab(root, work / "jupyterlab.log").start()
    drv = None
    try:
        drv = chrome(*found, work / "chromium-profile")
        yield Page(drv, lab)
    finally:
        if drv is not None:
            drv.quit()
        lab.stop()


if __name__ == "__main__":  # python tests/paper/labdriver.py NOTEBOOK SCREENSHOT [--run]
    nb, shot = Path(sys.argv[1]).resolve(), sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(nb, tmp)  # a copy: JupyterLab's autosave never touches the original
        with session(Path(tmp), Path(tmp)) as page:
            page.open(nb.name)
            if "--run" in sys.argv:
                page.run_all()
            print("dirty:", page.dirty(), "errors:", page.errors(), "log:", page.log_messages())
            page.screenshot(shot)
