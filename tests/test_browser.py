"""Notebooks 01 and 02 in JupyterLab, driven by a real browser (issue 11, section 5).

JupyterLab runs from this interpreter on 127.0.0.1 (a free port, a random token) on a temporary
copy of the notebooks, so the tracked ones never gain outputs.  Headless Chromium, driven by
selenium with Debian's ``chromium`` and ``chromium-driver`` (no Selenium Manager, no network),
opens each notebook, runs Run > Run All Cells, waits for the kernel to be idle, checks that every
plotly figure and widget rendered, drags the first slider of every live widget
(:func:`bapo.viz.figures.live_figure`) and checks that its figure changed, in plotly's data and
in the drawn SVG.

Skipped, with the reason, where Chromium, chromedriver or selenium are missing; with
``BAPO_REQUIRE_BROWSER=1`` (set by ``.ci/run`` once it has installed Chromium) a missing piece
fails the test instead.  ``BAPO_CHROMIUM`` and ``BAPO_CHROMEDRIVER`` point at other binaries.
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
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["01_entropy_clip_rule.ipynb", "02_gradient_balance.ipynb"]
CHROMIUM = os.environ.get("BAPO_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("BAPO_CHROMEDRIVER", "/usr/bin/chromedriver")
TRACEBACK = "Traceback (most recent call last)"
# What a notebook shows when a widget fails to render: the front end's error, or the kernel's
# plain-text repr of a widget that no front end drew.
BAD_TEXT = (
    "Error displaying widget",
    "FloatSlider(",
    "IntSlider(",
    "VBox(children=",
    "FigureWidget(",
    TRACEBACK,
)
# plotly's notice (in a pop-up on the page body) when Scattergl finds no WebGL
NO_WEBGL = "WebGL is not supported"
# Generous waits for a loaded 2-core machine; none of them is asserted as a speed.
START_S, RUN_S, RENDER_S = 180, 900, 120

pytestmark = pytest.mark.browser


def _missing() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"no executable {path} (Debian package {package}: apt-get install {package})"
    for module, extra in (("selenium", "dev"), ("jupyterlab", "notebooks"), ("psutil", "dev")):
        try:
            __import__(module)
        except ImportError:
            return f"python package {module} is not installed (pip install -e '.[{extra}]')"
    return None


@pytest.fixture(scope="module", autouse=True)
def _needs_browser():
    why = _missing()
    if why is None:
        return
    if os.environ.get("BAPO_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser test required (BAPO_REQUIRE_BROWSER=1) but {why}")
    pytest.skip(f"browser test skipped: {why}")


def _kill_tree(proc_pid: int, pids: set[int]) -> None:
    """SIGKILL ``proc_pid`` and ``pids`` (its descendants, collected while it lived) if alive."""
    import psutil

    for pid in {proc_pid, *pids}:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


def _descendants(pid: int) -> set[int]:
    import psutil

    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lab_settings(settings: Path) -> None:
    """User settings for the test's JupyterLab: every cell in the DOM (no windowing), no news
    pop-up over the notebook, no autosave."""
    for plugin, values in {
        "notebook-extension/tracker": {"windowingMode": "none"},
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        "docmanager-extension/plugin": {"autosave": False},
    }.items():
        path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def _executed_cells(path: Path) -> int:
    """Code cells of a notebook file that carry outputs or an execution count."""
    cells = json.loads(path.read_text())["cells"]
    return sum(bool(c.get("outputs") or c.get("execution_count")) for c in cells)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a temporary copy of the notebooks; yields (base URL, token, dir)."""
    tmp = tmp_path_factory.mktemp("lab")
    work = tmp / "notebooks"
    work.mkdir()
    for name in NOTEBOOKS:
        shutil.copy(ROOT / "notebooks" / name, work / name)
    _lab_settings(tmp / "settings")
    token = secrets.token_hex(16)
    env = dict(os.environ)
    # the kernel imports this checkout's bapo whatever its working directory; one model cache
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("BAPO_CACHE", str(ROOT / ".cache" / "bapo"))
    for var, sub in (
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("JUPYTERLAB_SETTINGS_DIR", "settings"),
        ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
    ):
        env[var] = str(tmp / sub)
    cmd = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={_free_port()}", "--ServerApp.port_retries=50",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
    ]  # fmt: skip
    if hasattr(os, "getuid") and os.getuid() == 0:
        cmd.append("--allow-root")
    log = tmp / "jupyter.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    tracked = {name: _executed_cells(ROOT / "notebooks" / name) for name in NOTEBOOKS}
    url, children = None, set()
    try:
        url = _wait_for_server(proc, tmp / "runtime", token, log)
        yield url, token, work
    finally:
        children = _descendants(proc.pid)  # the kernels, in sessions of their own
        _stop_server(proc, url, token)
        _kill_tree(proc.pid, children)
    gained = {n: k for n, k in tracked.items() if _executed_cells(ROOT / "notebooks" / n) > k}
    assert not gained, f"tracked notebooks gained outputs during the browser test: {gained}"


def _api(url: str, path: str, token: str, method: str = "GET") -> None:
    req = urllib.request.Request(
        f"{url}/api/{path}", method=method, headers={"Authorization": f"token {token}"}
    )
    urllib.request.urlopen(req, timeout=10).close()


def _wait_for_server(proc: subprocess.Popen, runtime: Path, token: str, log: Path) -> str:
    """The server's URL once /api/status answers, read from its runtime file (the port it took)."""
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"jupyter lab exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        info = runtime / f"jpserver-{proc.pid}.json"
        if info.exists():
            try:
                url = json.loads(info.read_text())["url"].rstrip("/")
                _api(url, "status", token)
                return url
            except (ValueError, KeyError, OSError):
                pass  # file half-written or server not answering yet
        time.sleep(0.5)
    pytest.fail(f"jupyter lab did not answer in {START_S} s:\n{log.read_text()[-3000:]}")


def _stop_server(proc: subprocess.Popen, url: str | None, token: str) -> None:
    """Ask the server to shut down (it stops its kernels), then SIGTERM, then SIGKILL."""
    if url is not None and proc.poll() is None:
        try:
            _api(url, "shutdown", token, method="POST")
        except (urllib.error.URLError, OSError):
            pass
    for sig in (None, signal.SIGTERM):
        if sig is not None and proc.poll() is None:
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            pass
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium through chromedriver; quit (and its processes gone) at the end."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    tmp = tmp_path_factory.mktemp("chromium")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--enable-unsafe-swiftshader",  # software WebGL for plotly's Scattergl
        f"--user-data-dir={tmp / 'profile'}",
    ):
        opts.add_argument(arg)
    # an explicit driver path: selenium skips Selenium Manager (no download, no network)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    try:
        driver.set_script_timeout(60)
        yield driver
    finally:
        children = _descendants(service.process.pid)
        try:
            driver.quit()
        finally:
            _kill_tree(service.process.pid, children)


# ----------------------------------------------------------------------------------------------
# The page, seen through JavaScript
# ----------------------------------------------------------------------------------------------
PANEL = "document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)')"

STATE_JS = f"""
const panel = {PANEL};
if (!panel) return null;
const status = panel.querySelector('.jp-Notebook-ExecutionIndicator');
return {{
  status: status ? status.dataset.status : null,
  cells: panel.querySelectorAll('.jp-Notebook .jp-Cell').length,
  prompts: [...panel.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
             .map(e => e.textContent.trim()),
}};
"""

# per code cell: its plotly figures, its widget boxes, and the text of its outputs
OUTPUTS_JS = f"""
return [...{PANEL}.querySelectorAll('.jp-CodeCell')].map(cell => {{
  const out = cell.querySelector('.jp-OutputArea');
  return {{
    plots: out.querySelectorAll('.js-plotly-plot').length,
    widgets: [...out.querySelectorAll('.widget-vbox')]
               .filter(b => b.querySelector(':scope > .widget-slider')).length,
    text: out.innerText,
  }};
}});
"""

# a figure as the browser holds it: plotly's traces, and the SVG it drew (axes, lines, shapes)
FIGURE_JS = """
const gd = arguments[0];
return {
  data: JSON.stringify(gd.data),
  svg: [...gd.querySelectorAll('svg.main-svg')].map(s => s.outerHTML).join(''),
};
"""


def _wait(driver, what: str, timeout: float, check):
    """Poll ``check(driver)`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check(driver)
        if last:
            return last
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout} s waiting for {what}; last state: {last!r}")


def _run_all(driver, attempts: int = 4) -> int:
    """Run > Run All Cells, through the menu bar as a user would.

    The menu acts on the notebook JupyterLab deems current, and right after a page load it may
    not have one yet (the item is then disabled, or a click on it does nothing); so click into
    the notebook first and try again until the cells are queued (``[*]``) or numbered.
    Returns the number of tries.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    for attempt in range(1, attempts + 1):
        driver.find_element(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Notebook .jp-Cell").click()
        menus = driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item")
        run = [m for m in menus if m.text == "Run"]
        assert run, f"JupyterLab's menu bar has no Run menu: {[m.text for m in menus]}"
        run[0].click()
        item = driver.find_element(
            By.CSS_SELECTOR, 'li.lm-Menu-item[data-command="runmenu:run-all"]'
        )
        assert "Run All Cells" in item.text
        if "lm-mod-disabled" in (item.get_attribute("class") or ""):
            driver.switch_to.active_element.send_keys(Keys.ESCAPE)
        else:
            item.click()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = driver.execute_script(STATE_JS)
            if any(p != "[ ]:" for p in state["prompts"]):
                return attempt
            time.sleep(0.5)
    pytest.fail(f"Run > Run All Cells started no cell in {attempts} tries")


def _finished(driver):
    """The state once every code cell has an execution count and the kernel is idle; a cell
    that raised ends Run All early, which the caller reports with the traceback."""
    state = driver.execute_script(STATE_JS)
    if not state or state["status"] != "idle" or any(p == "[*]:" for p in state["prompts"]):
        return None
    numbered = all(re.fullmatch(r"\[\d+\]:", p) for p in state["prompts"])
    failed = any(TRACEBACK in o["text"] for o in driver.execute_script(OUTPUTS_JS))
    return state if numbered or failed else None


def _drag_first_slider(driver, box) -> tuple[str, str, str]:
    """Drag the first slider's handle in ``box`` a third of its track towards the far end;
    returns (label, value before, value after) as the slider shows them."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    slider = box.find_element(By.CSS_SELECTOR, ".widget-slider")
    label = slider.find_element(By.CSS_SELECTOR, ".widget-label").text
    handle = slider.find_element(By.CSS_SELECTOR, ".noUi-handle")
    track = slider.find_element(By.CSS_SELECTOR, ".noUi-base")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)
    readout = slider.find_element(By.CSS_SELECTOR, ".widget-readout")
    lo, hi, value = (
        float(handle.get_attribute(a)) for a in ("aria-valuemin", "aria-valuemax", "aria-valuenow")
    )
    before = readout.text
    direction = 1 if hi - value >= value - lo else -1
    dx = direction * max(int(track.size["width"] / 3), 10)
    ActionChains(driver).click_and_hold(handle).move_by_offset(dx, 0).release().perform()
    return label, before, readout.text


PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _views(cell: dict) -> tuple[int, int]:
    """(plotly figures, widget views) a saved code cell displays; here every widget view is a
    :func:`~bapo.viz.figures.live_figure` box, sliders over one figure."""
    data = [o.get("data", {}) for o in cell["outputs"]]
    widgets = sum(WIDGET_MIME in d for d in data)
    return sum(PLOTLY_MIME in d for d in data) + widgets, widgets


def _save(driver, path: Path) -> list[dict]:
    """File > Save through the notebook's toolbar button; the saved code cells."""
    from selenium.webdriver.common.by import By

    before = path.stat().st_mtime_ns
    driver.find_element(
        By.CSS_SELECTOR, ".jp-NotebookPanel-toolbar [data-command='docmanager:save']"
    ).click()

    def saved(_):
        try:
            if path.stat().st_mtime_ns != before:
                return [
                    c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"
                ]
        except ValueError:  # caught half-written
            return None

    return _wait(driver, f"JupyterLab to save {path.name}", START_S, saved)


def _screenshot(driver, name: str, stage: str) -> None:
    """With BAPO_BROWSER_SHOTS=<dir>, save what the browser shows (for a failing run)."""
    if shots := os.environ.get("BAPO_BROWSER_SHOTS"):
        Path(shots).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(shots) / f"{Path(name).stem}-{stage}.png"))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_and_widgets_respond(lab, browser, name):
    from selenium.webdriver.common.by import By

    url, token, work = lab
    cells = json.loads((work / name).read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    t0 = time.monotonic()

    # a workspace of its own, so the page opens this notebook alone
    browser.get(f"{url}/lab/workspaces/test-{name[:2]}/tree/{name}?token={token}")
    _wait(browser, f"{name} to open with an idle kernel", START_S, lambda d: (
        (s := d.execute_script(STATE_JS)) and s["status"] == "idle"
        and s["cells"] == len(cells) and s
    ))  # fmt: skip
    t_open = time.monotonic()

    tries = _run_all(browser)
    state = _wait(browser, f"Run All Cells of {name} to finish", RUN_S, _finished)
    for i, o in enumerate(browser.execute_script(OUTPUTS_JS)):
        assert TRACEBACK not in o["text"], f"code cell {i} of {name} raised:\n{o['text'][-4000:]}"
    assert len(state["prompts"]) == len(code)
    t_run = time.monotonic()

    # what the kernel sent, as JupyterLab saves it (to the temporary copy): no error, and the
    # figures (plotly's mime type) and widget views that the browser must have drawn
    saved = _save(browser, work / name)
    errors = [o for c in saved for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"{name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    assert all(c["execution_count"] for c in saved), f"{name}: a code cell did not run"
    want = [_views(c) for c in saved]
    assert sum(w for _, w in want) > 0, f"{name} displays no widget"

    def rendered(d):  # all drawn, or a failure to draw that waiting will not mend
        outs = d.execute_script(OUTPUTS_JS)
        got = [(o["plots"], o["widgets"]) for o in outs]
        broken = any(bad in o["text"] for o in outs for bad in BAD_TEXT)
        return outs if got == want or broken else None

    outs = _wait(browser, f"{name}'s figures and widgets to render ({want})", RENDER_S, rendered)
    _screenshot(browser, name, "ran")
    for i, o in enumerate(outs):
        for bad in BAD_TEXT:
            assert bad not in o["text"], f"code cell {i} of {name} shows {bad!r}:\n{o['text']}"
    assert [(o["plots"], o["widgets"]) for o in outs] == want

    # each live widget: drag its first slider; plotly's data and the SVG it drew both change
    panel = browser.find_element(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden)")
    boxes = panel.find_elements(
        By.XPATH, ".//div[contains(@class, 'widget-vbox')][div[contains(@class, 'js-plotly-plot')]]"
    )
    assert len(boxes) == sum(w for _, w in want)
    moved = []
    for k, box in enumerate(boxes):
        plot = box.find_element(By.CSS_SELECTOR, ".js-plotly-plot")
        before = browser.execute_script(FIGURE_JS, plot)
        label, v0, v1 = _drag_first_slider(browser, box)
        assert v1 != v0, f"dragging slider {label!r} left it at {v0}"

        def changed(d, plot=plot, before=before):
            now = d.execute_script(FIGURE_JS, plot)
            return now if now["data"] != before["data"] and now["svg"] != before["svg"] else None

        _wait(browser, f"the figure under slider {label!r} to change", RENDER_S, changed)
        moved.append(f"{label} {v0} -> {v1}")
        _screenshot(browser, name, f"widget{k}-moved")

    text = browser.execute_script(f"return {PANEL}.innerText")
    for bad in BAD_TEXT:
        assert bad not in text, f"{name} shows {bad!r} after the sliders moved"
    assert NO_WEBGL not in browser.execute_script("return document.body.innerText")
    print(
        f"\n{name}: {len(code)} code cells, {sum(p for p, _ in want)} figures; sliders moved: "
        f"{'; '.join(moved)}; Run All Cells clicked {tries} time(s); open {t_open - t0:.0f} s, "
        f"run all {t_run - t_open:.0f} s, figures and sliders {time.monotonic() - t_run:.0f} s"
    )
