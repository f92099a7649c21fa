"""Notebooks 05 and 02 as a person uses them: in JupyterLab, in a real (headless) Chromium.

nbval runs the cells but never renders a widget or moves a slider. Here a JupyterLab server is started on
a loopback port (token, throw-away HOME and Jupyter config/runtime/data/settings folders), Chromium is
driven through Selenium and chromedriver, and:

- a copy of notebook 05 pointed at a one-epoch tiny DCGAN run is run through the UI (Run > Run All
  Cells); no cell may end in an error, the explorer must render as widgets (not "Loading widget..." nor
  a text repr), a direction slider dragged by the mouse must change the shown image, ``reset`` must bring
  back the first image exactly, the seed must be settable by typing, export must write the strip's PNG
  and GIF, and the layout must hold (slider tracks on one left edge, the export button's label whole);
- notebook 02, executed by papermill on the smoke parameters, is opened and its figures must render.

Selected with ``-m browser`` and skipped with ``-m "not browser"``. Needs ``chromium`` and
``chromedriver`` (Debian: ``apt-get install chromium chromium-driver``; ``make test`` installs them when
it can): without them the test is skipped with the reason, or fails under CI (``CI=true``).
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, SMOKE_PARAMETERS, _tiny_run

pytestmark = pytest.mark.browser

SERVER_START_S = 120  # JupyterLab start on a loaded 2-core machine
KERNEL_START_S = 120
RUN_ALL_S = 240  # notebook 05 on the tiny run: PCA over 2,000 generated images dominates
UPDATE_S = 30  # one widget round trip (browser -> kernel -> browser)
N_COMPONENTS = 3
SEED_A, SEED_B, TYPED_SEED = 0, 1, 42


# -------------------------------------------------------------------------------------- requirements


def _browser_binaries() -> tuple[str, str]:
    """Paths of Chromium and chromedriver; fails (CI) or skips (elsewhere) naming what is missing."""
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromedriver", driver)) if path is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        msg = (f"browser test needs {', '.join(missing)}: install with `apt-get install chromium "
               f"chromium-driver` (as root; `make test` does it), or deselect with -m 'not browser'")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    return chromium, driver


def _kill_tree(proc: subprocess.Popen | None, extra: list | None = None) -> None:
    """Terminate a process we started, its process group and every descendant we saw (kernels run in
    sessions of their own, so the group alone would leave them behind)."""
    import psutil

    procs = list(extra or [])
    if proc is not None:
        try:
            procs += psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def binaries():
    return _browser_binaries()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, binaries):
    """The server's root folder, with notebook 02 being executed by papermill in the background (it
    takes longest, so it runs while notebook 05 is tested)."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    root = tmp_path_factory.mktemp("lab")
    env = _child_env(root)
    params = dict(SMOKE_PARAMETERS["02_dcgan_training"], out_root=str(root / "out02"))
    log02 = (root / "papermill-02.log").open("w")
    proc02 = subprocess.Popen(
        [sys.executable, "-m", "papermill", "--kernel", "python3", "--no-progress-bar",
         str(ROOT / "notebooks" / "02_dcgan_training.ipynb"), str(root / "02_dcgan_training.ipynb"),
         "-y", json.dumps(params)],
        cwd=root, env=env, stdout=log02, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _tiny_run(root / "tiny-run")
        nb = parameterize_notebook(load_notebook_node(str(ROOT / "notebooks" / "05_latent_explorer.ipynb")),
                                   {"run_dir": str(root / "tiny-run"), "n_components": N_COMPONENTS,
                                    "seed_a": SEED_A, "seed_b": SEED_B, "out_dir": str(root / "out05")})
        nbformat.write(nb, root / "05_latent_explorer.ipynb")
        yield {"root": root, "proc02": proc02, "log02": root / "papermill-02.log"}
    finally:
        _kill_tree(proc02)
        log02.close()


def _child_env(root: Path) -> dict:
    """Environment of the server, its kernels and papermill: nothing read from or written to the real
    HOME or Jupyter folders; this checkout first on the path; one thread per process."""
    home = root / "home"
    dirs = {"HOME": home, "JUPYTER_CONFIG_DIR": home / "config", "JUPYTER_RUNTIME_DIR": home / "runtime",
            "JUPYTER_DATA_DIR": home / "data", "JUPYTERLAB_SETTINGS_DIR": home / "lab-settings",
            "JUPYTERLAB_WORKSPACES_DIR": home / "lab-workspaces", "IPYTHONDIR": home / "ipython",
            "MPLCONFIGDIR": home / "mpl"}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "IPYTHON"))}
    env.update({k: str(v) for k, v in dirs.items()})
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    env.pop("MPLBACKEND", None)  # the kernel's inline backend shows the figures
    return env


def _write_lab_settings(settings: Path) -> None:
    """Every cell in the DOM (no windowing) and no news/update pop-ups."""
    for rel, value in [("@jupyterlab/notebook-extension/tracker.jupyterlab-settings", {"windowingMode": "none"}),
                       ("@jupyterlab/apputils-extension/notification.jupyterlab-settings",
                        {"fetchNews": "false", "checkForUpdates": False})]:
        (settings / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings / rel).write_text(json.dumps(value))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(workdir):
    """A JupyterLab server on 127.0.0.1 with a random token, serving ``workdir``; stopped afterwards with
    its kernels."""
    root = workdir["root"]
    env = _child_env(root)
    _write_lab_settings(Path(env["JUPYTERLAB_SETTINGS_DIR"]))
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = root / "jupyterlab.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with status {proc.returncode}:\n{_tail(log)}")
            try:
                req = urllib.request.Request(f"{base}/api/status", headers={"Authorization": f"token {token}"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer on {base} within {SERVER_START_S} s:\n{_tail(log)}")
            time.sleep(0.5)
        yield {"base": base, "token": token, "root": root, "log": log}
    finally:
        _kill_tree(proc)


@pytest.fixture(scope="module")
def browser(binaries, workdir):
    """Headless Chromium through chromedriver (Debian packages; nothing downloaded)."""
    import psutil
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = binaries
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1100", "--force-device-scale-factor=1", "--no-first-run",
                f"--user-data-dir={workdir['root'] / 'chromium-profile'}"]:
        opts.add_argument(arg)
    service = Service(executable_path=chromedriver, log_output=str(workdir["root"] / "chromedriver.log"),
                      popen_kw={"start_new_session": True})
    driver = webdriver.Chrome(service=service, options=opts)
    children = psutil.Process(service.process.pid).children(recursive=True)
    try:
        driver.set_script_timeout(UPDATE_S)
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            _kill_tree(service.process, children)


# ----------------------------------------------------------------------------------------- page helpers


def _wait(what: str, fn, timeout: float, interval: float = 0.25, describe=None):
    """Poll ``fn`` until it returns something truthy; fail naming ``what`` after ``timeout`` s (with
    ``describe()``, what the page shows instead)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f"; the page shows: {describe()}" if describe else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {value!r}){seen}")
        time.sleep(interval)


_NOTEBOOK_STATE = """
const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!w || !w.content || !w.content.model || !w.context || !w.context.isReady) return null;
const s = w.sessionContext.session, k = s && s.kernel;
const cells = w.content.model.toJSON().cells.filter(c => c.cell_type === 'code');
return {path: w.context.path, kernel: k ? k.status : null,
        pending: cells.filter(c => c.execution_count === null).length, n: cells.length,
        errors: cells.flatMap(c => c.outputs).filter(o => o.output_type === 'error')
                     .map(o => o.ename + ': ' + o.evalue)};
"""


def _open_notebook(driver, lab, name: str) -> dict:
    driver.get(f"{lab['base']}/lab/tree/{name}?token={lab['token']}")

    def ready():
        state = driver.execute_script(_NOTEBOOK_STATE)
        return state if state and state["path"] == name and state["kernel"] == "idle" else None

    return _wait(f"{name} to open with an idle kernel", ready, KERNEL_START_S)


def _click(driver, element) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    element.click()


def _run_all_from_menu(driver) -> None:
    from selenium.webdriver.common.by import By

    menu = driver.find_element(By.XPATH, "//li[contains(@class, 'lm-MenuBar-item')]"
                                         "[.//div[contains(@class, 'lm-MenuBar-itemLabel')][text()='Run']]")
    menu.click()
    item = _wait("Run > Run All Cells", lambda: driver.find_elements(
        By.XPATH, "//li[contains(@class, 'lm-Menu-item')]"
                  "[.//div[contains(@class, 'lm-Menu-itemLabel')][text()='Run All Cells']]"), 10)[0]
    item.click()


def _img_pixels(driver, img) -> np.ndarray:
    """The exact pixels an <img> shows: its (blob or data) source fetched in the page and decoded."""
    data = driver.execute_async_script("""
        const [img, done] = arguments;
        fetch(img.src).then(r => r.arrayBuffer()).then(buf => {
            const u = new Uint8Array(buf); let s = '';
            for (let i = 0; i < u.length; i += 0x8000) {
                s += String.fromCharCode.apply(null, u.subarray(i, i + 0x8000));
            }
            done(btoa(s));
        }).catch(e => done('error: ' + e));
    """, img)
    assert not data.startswith("error"), data
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("L"))


def _changed_src(driver, img, before: str, what: str) -> tuple[str, float]:
    """Wait until the image's source differs from ``before``; returns it and the seconds it took."""
    t0 = time.monotonic()
    src = _wait(what, lambda: (s := img.get_attribute("src")) != before and s, UPDATE_S, interval=0.02)
    return src, time.monotonic() - t0


# ---------------------------------------------------------------------------------------------- tests


def test_latent_explorer_in_jupyterlab(lab, browser, workdir):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver, root = browser, workdir["root"]
    _open_notebook(driver, lab, "05_latent_explorer.ipynb")
    _run_all_from_menu(driver)

    def finished():
        state = driver.execute_script(_NOTEBOOK_STATE)
        if state and state["errors"]:
            pytest.fail(f"notebook 05 raised in JupyterLab: {state['errors']}")
        return state if state and state["pending"] == 0 and state["kernel"] == "idle" else None

    state = _wait("notebook 05 to run to the end", finished, RUN_ALL_S)
    assert state["n"] >= 5 and not state["errors"]

    # --- the widget rendered as widgets in the last cell's output
    out = driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell")[-1]
    area = _wait("the explorer widget to render", lambda: out.find_elements(
        By.CSS_SELECTOR, ".jp-OutputArea-output > .widget-vbox"), UPDATE_S,
        describe=lambda: driver.execute_script(
            "const a = arguments[0].querySelector('.jp-OutputArea');"
            "return a ? a.outerHTML.replace(/<svg.*?<[/]svg>/gs, '').slice(0, 3000) : 'no output area'", out))[0]
    text = out.text
    assert "Loading widget" not in text and "VBox(" not in text, text
    sliders = area.find_elements(By.CSS_SELECTOR, ".widget-hslider")
    labels = [s.find_element(By.CSS_SELECTOR, ".widget-label").text for s in sliders]
    assert [lb.split(" ")[0] for lb in labels] == [f"PC{i + 1}" for i in range(N_COMPONENTS)], labels
    def images_loaded():
        imgs = area.find_elements(By.CSS_SELECTOR, "img.widget-image")
        ok = len(imgs) == 2 and all(driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", i) for i in imgs)
        return imgs if ok else None

    image, strip = _wait("the view and the strip to load", images_loaded, UPDATE_S)
    first_src = image.get_attribute("src")
    first = _img_pixels(driver, image)
    assert first.shape == (256, 256) and first.std() > 0  # 64 px enlarged 4x, not a blank picture

    # --- the rough edges: one left edge for every slider track, the export label whole
    tracks = [driver.execute_script("return arguments[0].getBoundingClientRect().left",
                                    s.find_element(By.CSS_SELECTOR, ".slider-container")) for s in sliders]
    assert max(tracks) - min(tracks) < 1.0, f"slider tracks start at x = {tracks}"
    export = next(b for b in area.find_elements(By.CSS_SELECTOR, "button") if "export strip" in b.text)
    assert export.text.strip() == "export strip PNG/GIF"
    widths = driver.execute_script("return [arguments[0].scrollWidth, arguments[0].clientWidth]", export)
    assert widths[0] <= widths[1], f"export label cut: scrollWidth {widths[0]} > clientWidth {widths[1]}"

    # --- drag PC1's handle with the mouse: the image changes
    handle = sliders[0].find_element(By.CSS_SELECTOR, ".noUi-handle")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", handle)
    # to the right end of the track (+3 standard deviations): a one-epoch generator changes little
    ActionChains(driver).click_and_hold(handle).move_by_offset(400, 0).release().perform()
    moved_src, slider_s = _changed_src(driver, image, first_src, "the image to follow the PC1 slider")
    moved = _img_pixels(driver, image)
    readout = sliders[0].find_element(By.CSS_SELECTOR, ".widget-readout").text
    assert float(readout) == 3.0, readout
    diff = np.abs(moved.astype(int) - first.astype(int))
    changed = (diff > 0).mean()
    assert changed > 0.02, f"PC1 at +3 changed {100 * changed:.2f}% of the pixels (mean |diff| {diff.mean():.3f})"

    # --- reset brings the first image back, pixel for pixel
    reset = next(b for b in area.find_elements(By.CSS_SELECTOR, "button") if b.text.strip() == "reset directions")
    _click(driver, reset)
    _changed_src(driver, image, moved_src, "the image to follow reset")
    assert np.array_equal(_img_pixels(driver, image), first)
    assert all(float(s.find_element(By.CSS_SELECTOR, ".widget-readout").text) == 0 for s in sliders)

    # --- the seed is typed into a text box
    seed_box = next(b for b in area.find_elements(By.CSS_SELECTOR, ".widget-text")
                    if b.find_element(By.CSS_SELECTOR, ".widget-label").text == "seed")
    box_input = seed_box.find_element(By.CSS_SELECTOR, "input")
    before, strip_before = image.get_attribute("src"), strip.get_attribute("src")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", box_input)
    box_input.send_keys(Keys.CONTROL, "a")
    box_input.send_keys(str(TYPED_SEED), Keys.ENTER)
    _changed_src(driver, image, before, f"the image to follow seed {TYPED_SEED}")
    seeded = _img_pixels(driver, image)
    assert (seeded != first).mean() > 0.02

    # --- export writes the strip (PNG, GIF) and the view (PNG), the pictures the page shows
    _changed_src(driver, strip, strip_before, f"the strip to follow seed {TYPED_SEED}")
    _click(driver, export)
    status = _wait("the export status", lambda: next((lb.text for lb in area.find_elements(
        By.XPATH, ".//*[starts-with(normalize-space(text()), 'wrote ')]")), None), UPDATE_S,
        describe=lambda: area.text)
    out05 = root / "out05"
    names = [f"interp_{TYPED_SEED:04d}_{SEED_B:04d}.png", f"interp_{TYPED_SEED:04d}_{SEED_B:04d}.gif",
             f"seed_{TYPED_SEED:04d}.png"]
    for name in names:
        assert (out05 / name).is_file() and name in status, (name, status)
    strip_png = np.asarray(Image.open(out05 / names[0]))
    assert strip_png.shape == (64, 8 * 66 - 2)  # 8 frames of 64 px, 2 px gaps
    assert np.array_equal(_img_pixels(driver, strip)[::2, ::2], strip_png)  # shown 2x
    assert np.array_equal(np.asarray(Image.open(out05 / names[2])), seeded[::4, ::4])  # shown 4x
    with Image.open(out05 / names[1]) as gif:
        assert gif.n_frames == 8 + 6  # forth, then back without repeating the ends

    # --- a picture of the explorer, for the record
    shot = root / "latent_explorer.png"
    area.screenshot(str(shot))
    assert Image.open(shot).size[0] > 400
    print(f"\nPC1 +3: {100 * changed:.1f}% of pixels changed, mean |diff| {diff.mean():.2f} grey levels, "
          f"image updated {slider_s:.2f} s after the release; screenshot {shot}")


def test_training_notebook_figures_render_in_jupyterlab(lab, browser, workdir):
    from selenium.webdriver.common.by import By

    import nbformat

    proc = workdir["proc02"]
    try:
        proc.wait(timeout=RUN_ALL_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"papermill did not finish notebook 02 within {RUN_ALL_S} s:\n{_tail(workdir['log02'])}")
    assert proc.returncode == 0, f"papermill failed on notebook 02:\n{_tail(workdir['log02'])}"
    nb = nbformat.read(workdir["root"] / "02_dcgan_training.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    n_images = sum(any(k.startswith("image/") for k in o.get("data", {})) for o in outputs)  # PNGs, a GIF
    assert n_images >= 3

    driver = browser
    state = _open_notebook(driver, lab, "02_dcgan_training.ipynb")
    assert state["pending"] == 0 and not state["errors"]

    def rendered():
        return driver.execute_script("""
            const imgs = [...document.querySelectorAll('.jp-Notebook .jp-OutputArea-output img')];
            return imgs.filter(i => i.complete && i.naturalWidth > 0).length;""")

    shown = _wait(f"{n_images} figures to render", lambda: (n := rendered()) >= n_images and n, UPDATE_S)
    assert shown == n_images
    text = driver.find_element(By.CSS_SELECTOR, ".jp-Notebook").text
    assert "Traceback" not in text
