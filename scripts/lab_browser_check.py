"""Open cotlib in JupyterLab in a real headless browser, the way a new user meets it, and check it.

Starts JupyterLab on 127.0.0.1 with a token, serving the project root as `make lab` does; drives Debian's
`chromium` through `chromium-driver` (Selenium); opens the tour (`notebooks/explore.ipynb`), lets the
kernel connect, runs all cells and saves, as autosave would; opens executed cell notebooks from
`outputs/`; renders a progress bar; takes screenshots. It fails when

- a notebook asks for a kernel, or gets another kernel than `Python (cotlib)`;
- a cell shows an error or a warning box (an error output, anything on stderr, a widget that cannot be
  drawn, a Python warning printed into an output);
- `outputs/` cannot be reached from Lab (the 404 that `jupyter lab notebooks/` gave);
- a progress bar does not render as a widget;
- opening and running the notebooks changed what `git status` / `git diff` say.

    .venv/bin/python scripts/lab_browser_check.py                       # the tour + the first executed evaluate notebook
    .venv/bin/python scripts/lab_browser_check.py --open outputs/demo/figures/executed.ipynb --shots /tmp/shots

Nothing is fetched from the web: Lab's news and update checks are off, and the browser runs with
background networking off. Exit 0 when every check passed; the report (JSON) goes to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNEL_DISPLAY = "Python (cotlib)"
LAB_CONFIG = ROOT / "scripts" / "jupyter_lab_config.py"  # what `make lab` uses
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                  "--hide-scrollbars", "--force-device-scale-factor=1"]
HOW_TO_RUN = ("apt-get install -y chromium chromium-driver; pip install selenium; "
              ".venv/bin/python scripts/lab_browser_check.py (or: pytest -m slow tests/test_lab.py)")
# text in an output that a person reads as trouble
BAD_TEXT = ("Traceback (most recent call last)", "Error displaying widget", "Error rendering output",
            "Warning: ", "IProgress not found", "Model not found")


def browser_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver), or None where either is missing."""
    chrome = next((p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))), None)
    driver = shutil.which("chromedriver") or next((p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
                                                   if os.access(p, os.X_OK)), None)
    return (chrome, driver) if chrome and driver else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git_state(root: Path) -> dict[str, str] | None:
    """What git says about the tree: `git status --porcelain`, and a hash of `git diff HEAD` (through the
    notebook filter where it is installed), so a file that was already modified and changed again shows."""
    if subprocess.run(["git", "rev-parse", "--git-dir"], cwd=root, capture_output=True).returncode != 0:
        return None
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=root,
                            capture_output=True, text=True, timeout=120)
    diff = subprocess.run(["git", "diff", "HEAD", "--binary"], cwd=root, capture_output=True, timeout=120)
    return {"status": status.stdout + status.stderr, "diff_sha256": hashlib.sha256(diff.stdout).hexdigest()}


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    screenshots: list[str] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)  # what each notebook's outputs show, as text
    timings: dict[str, float] = field(default_factory=dict)

    def fail(self, msg: str) -> None:
        self.problems.append(msg)

    def note(self, msg: str) -> None:
        self.seen.append(msg)


class Lab:
    """A JupyterLab server on 127.0.0.1 with a random token, with settings and workspaces of its own."""

    def __init__(self, root: Path, python: str = sys.executable):
        self.root, self.python = root, python
        self.token, self.port = secrets.token_hex(16), _free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="cotlib-lab-"))
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _settings(self) -> Path:
        """User settings: no news or update checks (no requests to the web), the rest as shipped."""
        d = self.tmp / "settings"
        f = d / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
        f.parent.mkdir(parents=True)
        f.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        return d

    def start(self, timeout: float = 90) -> None:
        env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(self._settings()),
               "JUPYTERLAB_WORKSPACES_DIR": str(self.tmp / "workspaces"), "JUPYTER_RUNTIME_DIR": str(self.tmp / "runtime")}
        env.pop("JPY_SESSION_NAME", None)
        cmd = [self.python, "-m", "jupyterlab", f"--config={LAB_CONFIG}", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
               "--LabApp.expose_app_in_browser=True", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--ServerApp.log_level=WARN"] + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])
        self.log = open(self.tmp / "lab.log", "w")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited: {self.log_text()[-2000:]}")
            if self.get("/api/status")[0] == 200:
                return
            time.sleep(0.5)
        raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f}s: {self.log_text()[-2000:]}")

    def get(self, path: str) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base + path, headers={"Authorization": f"token {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as err:
            return err.code, b""
        except OSError:
            return 0, b""

    def log_text(self) -> str:
        return (self.tmp / "lab.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            req = urllib.request.Request(self.base + "/api/shutdown", method="POST",
                                         headers={"Authorization": f"token {self.token}"})
            try:
                urllib.request.urlopen(req, timeout=10).read()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.tmp, ignore_errors=True)


_JS_OPEN = """
const [path, done] = [arguments[0], arguments[arguments.length - 1]];
(async () => {
  const app = window.jupyterapp; await app.restored;
  const w = await app.commands.execute('docmanager:open', {path: path, factory: 'Notebook'});
  await w.context.ready;
  window.__cotlib = window.__cotlib || {}; window.__cotlib[path] = w;
  app.shell.activateById(w.id);
  return {id: w.id};
})().then(done, e => done({error: String(e)}));
"""

_JS_KERNEL = """
const w = window.__cotlib[arguments[0]];
const s = w.sessionContext;
const k = s.session && s.session.kernel;
return {ready: s.isReady, name: s.kernelDisplayName, status: k ? k.status : null,
        dialogs: Array.from(document.querySelectorAll('.jp-Dialog')).map(d => d.innerText.slice(0, 300)),
        dirty: w.context.model.dirty,
        language_info: JSON.stringify(w.context.model.getMetadata('language_info') || null)};
"""

_JS_RUN_ALL = """
const [path, done] = [arguments[0], arguments[arguments.length - 1]];
(async () => {
  const app = window.jupyterapp; const w = window.__cotlib[path];
  app.shell.activateById(w.id);
  await app.commands.execute('notebook:run-all-cells');
  return true;
})().then(done, e => done({error: String(e)}));
"""

_JS_SAVE = """
const [path, done] = [arguments[0], arguments[arguments.length - 1]];
window.__cotlib[path].context.save().then(() => done(true), e => done({error: String(e)}));
"""

_JS_CELLS = """
const w = window.__cotlib[arguments[0]];
const out = [];
for (let i = 0; i < w.content.widgets.length; i++) {
  const cell = w.content.widgets[i]; const m = cell.model;
  const boxes = Array.from(cell.node.querySelectorAll('.jp-OutputArea-output'));
  out.push({
    type: m.type, tags: m.getMetadata('tags') || [],
    source: m.sharedModel.getSource().slice(0, 120),
    count: m.type === 'code' ? m.executionCount : null,
    outputs: m.type === 'code' ? m.outputs.toJSON() : [],
    stderr_boxes: boxes.filter(b => b.getAttribute('data-mime-type') === 'application/vnd.jupyter.stderr').length,
    widgets: cell.node.querySelectorAll('.jupyter-widgets, .widget-progress').length,
    images: cell.node.querySelectorAll('.jp-RenderedImage img').length,
    text: boxes.map(b => b.innerText).join('\\n').slice(0, 4000),
  });
}
return out;
"""

_JS_SCROLL = """
const [path, i, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
const w = window.__cotlib[path];
w.content.scrollToItem(i, 'start').then(() => setTimeout(() => done(true), 700), () => done(false));
"""

_JS_SIDEBAR = """
const [show, path, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
const app = window.jupyterapp;
(async () => {
  if (show) {
    await app.commands.execute('filebrowser:go-to-path', {path: path, dontShowBrowser: false});
    app.shell.expandLeft();
  } else { app.shell.collapseLeft(); }
  return true;
})().then(done, e => done({error: String(e)}));
"""

_JS_CLOSE_ALL = """
const done = arguments[arguments.length - 1];
window.jupyterapp.commands.execute('application:close-all').then(() => done(true), e => done({error: String(e)}));
"""


class Browser:
    def __init__(self, chrome: str, driver: str, size: tuple[int, int] = (1366, 900)):
        os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download a driver
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="cotlib-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = chrome
        for f in CHROMIUM_FLAGS + [f"--user-data-dir={self.profile}", f"--window-size={size[0]},{size[1]}"]:
            opts.add_argument(f)
        self.d = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
        self.d.set_script_timeout(180)

    def js(self, script: str, *args):
        return self.d.execute_script(script, *args)

    def ajs(self, script: str, *args):
        res = self.d.execute_async_script(script, *args)
        if isinstance(res, dict) and "error" in res:
            raise RuntimeError(res["error"])
        return res

    def shot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.d.save_screenshot(str(path))

    def quit(self) -> None:
        try:
            self.d.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


def _wait(pred, timeout: float, what: str, step: float = 0.5):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = pred()
        if last:
            return last
        time.sleep(step)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s")


def check_cells(label: str, cells: list[dict], report: Report, expect_run: bool) -> None:
    """Every error or warning box a person would see in the notebook, and cells that did not run."""
    for i, c in enumerate(cells):
        if c["type"] != "code":
            continue
        where = f"{label} cell {i} ({c['source'].splitlines()[0] if c['source'] else ''!r})"
        if expect_run and c["count"] is None:
            report.fail(f"{where}: did not run")
        for o in c["outputs"]:
            if o.get("output_type") == "error":
                report.fail(f"{where}: error box: {o.get('ename')}: {o.get('evalue')}")
            elif o.get("output_type") == "stream" and o.get("name") == "stderr":
                report.fail(f"{where}: warning box (stderr): {''.join(o.get('text', ''))[:300]!r}")
            elif "application/vnd.jupyter.stderr" in (o.get("data") or {}):
                report.fail(f"{where}: warning box (stderr display)")
        if c["stderr_boxes"] and not any(p.startswith(where) for p in report.problems):
            report.fail(f"{where}: {c['stderr_boxes']} pink stderr box(es) on screen")
        bad = [t for t in BAD_TEXT if t in c["text"]]
        if bad:
            report.fail(f"{where}: output shows {bad}: {c['text'][:300]!r}")


def _sections(cells: list[dict]) -> list[int]:
    """Where to take screenshots: the top, and every '## ' section."""
    return [0] + [i for i, c in enumerate(cells) if c["type"] == "markdown" and c["source"].startswith("## ")]


def _progress_notebook(root: Path) -> str:
    """A scratch notebook (under outputs/, which git ignores) whose cell draws cotlib's progress bar."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    rel = "outputs/lab-check/progress.ipynb"
    nb = new_notebook(cells=[new_code_cell("import time\nfrom cotlib import show\n\n"
                                           "for _ in show.progress(range(5), desc='progress check'):\n"
                                           "    time.sleep(0.1)\nshow.progress_mode()")])
    nb.metadata["kernelspec"] = {"name": "cotlib", "display_name": KERNEL_DISPLAY, "language": "python"}
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, root / rel)
    return rel


def run_check(root: Path = ROOT, run: list[str] | None = None, open_: list[str] | None = None,
              shots: Path | None = None, expect_clean: bool = False, progress: bool = True,
              timeout: float = 150, size: tuple[int, int] = (1366, 900)) -> Report:
    """The whole check (see the module's docstring). `run`: notebooks to run all and save; `open_`:
    executed notebooks to look at; `expect_clean`: `git status` must be empty afterwards (else unchanged)."""
    report, t0 = Report(), time.monotonic()
    run = ["notebooks/explore.ipynb"] if run is None else run
    open_ = [] if open_ is None else open_
    paths = browser_paths()
    if paths is None:
        report.fail(f"no chromium/chromedriver here; to run this check: {HOW_TO_RUN}")
        return report
    git_before = git_state(root)
    extra = [_progress_notebook(root)] if progress else []
    lab = Lab(root)
    browser = None
    try:
        lab.start()
        report.timings["lab_started"] = round(time.monotonic() - t0, 1)
        for p in ["outputs", *open_]:
            code, _ = lab.get(f"/api/contents/{p}?content=0")
            (report.note if code == 200 else report.fail)(f"GET /api/contents/{p}: {code}")
        browser = Browser(*paths, size=size)
        browser.d.get(f"{lab.base}/lab?token={lab.token}")
        _wait(lambda: browser.js("return !!(window.jupyterapp && document.querySelector('.jp-LabShell'))"), 60,
              "Lab's page loads")
        browser.ajs("const d = arguments[arguments.length-1]; window.jupyterapp.restored.then(() => d(true));")
        report.timings["page_loaded"] = round(time.monotonic() - t0, 1)
        for label, path, execute in ([(Path(p).stem, p, True) for p in run] + [(_label(p), p, False) for p in open_]
                                     + [("progress", p, True) for p in extra]):
            _one_notebook(browser, lab, report, label, path, execute, shots, t0, timeout)
        if shots and open_:  # the file browser, in the folder of the first executed notebook
            browser.js("window.jupyterapp.shell.activateById(window.__cotlib[arguments[0]].id)", open_[0])
            browser.ajs(_JS_SIDEBAR, True, str(Path(open_[0]).parent))
            time.sleep(1.0)
            browser.ajs(_JS_SCROLL, open_[0], 0)
            browser.shot(shots / "lab-filebrowser.png")
            report.screenshots.append(str(shots / "lab-filebrowser.png"))
        browser.ajs(_JS_CLOSE_ALL)
    except Exception as err:  # noqa: BLE001 - everything that went wrong is part of the report
        report.fail(f"{type(err).__name__}: {err}")
        if browser and shots:
            browser.shot(shots / "failure.png")
            report.screenshots.append(str(shots / "failure.png"))
    finally:
        if browser:
            browser.quit()
        lab.stop()
        for p in extra:
            (root / p).unlink(missing_ok=True)
            shutil.rmtree(root / Path(p).parent / ".ipynb_checkpoints", ignore_errors=True)
            with contextlib.suppress(OSError):
                (root / p).parent.rmdir()
    git_after = git_state(root)
    if git_before is None:
        report.note("not a git checkout: git status not checked")
    elif expect_clean and git_after["status"].strip():
        report.fail(f"git status is not clean after opening and running the notebooks:\n{git_after['status']}")
    elif git_after != git_before:
        report.fail(f"opening and running the notebooks changed git's view of the tree:\n"
                    f"before:\n{git_before['status']}after:\n{git_after['status']}")
    else:
        report.note("git status unchanged" + (" and clean" if not git_after["status"].strip() else ""))
    report.timings["total"] = round(time.monotonic() - t0, 1)
    return report


def _label(path: str) -> str:
    parts = Path(path).parts
    return "-".join(parts[-3:-1]) if len(parts) >= 3 else Path(path).stem


def _one_notebook(browser: Browser, lab: Lab, report: Report, label: str, path: str, execute: bool,
                  shots: Path | None, t0: float, timeout: float) -> None:
    browser.ajs(_JS_OPEN, path)
    k = _wait(lambda: (s := browser.js(_JS_KERNEL, path)) and (s["dialogs"] or (s["ready"] and s["status"] == "idle")) and s,
              90, f"{path}: the kernel connects")
    if k["dialogs"]:
        report.fail(f"{path}: a dialog asked: {k['dialogs']}")
        return
    (report.note if k["name"] == KERNEL_DISPLAY else report.fail)(f"{path}: kernel {k['name']!r} picked without a prompt")
    report.timings[f"{label}_kernel"] = round(time.monotonic() - t0, 1)
    if execute:
        browser.ajs(_JS_RUN_ALL, path)
        _wait(lambda: browser.js(_JS_KERNEL, path)["status"] == "idle"
              and all(c["count"] is not None for c in browser.js(_JS_CELLS, path) if c["type"] == "code"),
              timeout, f"{path}: Run All finishes")
        time.sleep(1.0)  # late outputs (widgets) settle
        k = browser.js(_JS_KERNEL, path)
        report.note(f"{path}: ran all cells; unsaved changes before saving: {k['dirty']}; "
                    f"language_info filled in: {k['language_info'] != 'null'}")
        browser.ajs(_JS_SAVE, path)  # what autosave does two minutes later
        report.timings[f"{label}_ran"] = round(time.monotonic() - t0, 1)
    cells = browser.js(_JS_CELLS, path)
    check_cells(path, cells, report, expect_run=execute)
    report.texts[path] = "\n".join(c["text"] for c in cells)
    n_widgets = sum(c["widgets"] for c in cells)
    if label == "progress":
        (report.note if n_widgets else report.fail)(f"{path}: progress bar drawn as a widget: {n_widgets > 0}")
        return
    report.note(f"{path}: {sum(c['type'] == 'code' for c in cells)} code cells, "
                f"{sum(len(c['outputs']) for c in cells)} outputs, {sum(c['images'] for c in cells)} images, "
                f"{n_widgets} widgets")
    if shots:
        browser.ajs(_JS_SIDEBAR, False, "")
        for n, i in enumerate(_sections(cells)):
            browser.ajs(_JS_SCROLL, path, i)
            f = shots / f"lab-{label}-{n}.png"
            browser.shot(f)
            report.screenshots.append(str(f))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="the project root Lab serves (default: this checkout)")
    ap.add_argument("--run", action="append", help="a notebook to run all and save (default: notebooks/explore.ipynb)")
    ap.add_argument("--open", action="append", dest="open_", metavar="PATH",
                    help="an executed notebook to look at (default: the first outputs/*/evaluate/*/executed.ipynb)")
    ap.add_argument("--shots", type=Path, help="a folder for the screenshots")
    ap.add_argument("--expect-clean", action="store_true", help="git status must be empty afterwards")
    ap.add_argument("--no-progress", action="store_true", help="skip the progress-bar widget check")
    ap.add_argument("--timeout", type=float, default=150, help="seconds for one notebook's Run All")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    open_ = args.open_
    if open_ is None:
        found = sorted(root.glob("outputs/*/evaluate/*/executed.ipynb"))
        open_ = [str(found[0].relative_to(root))] if found else []
    report = run_check(root, args.run, open_, args.shots, args.expect_clean, not args.no_progress, args.timeout)
    print(json.dumps({k: v for k, v in report.__dict__.items() if k != "texts"}, indent=1))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
