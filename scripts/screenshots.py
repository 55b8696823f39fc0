"""Screenshots of the MLflow UI for the docs: docs/mlflow-runs-table.png (the Model training view's runs
table: one row per pipeline execution with its dataset, test F1 / Jaccard and best validation Jaccard)
and docs/mlflow-charts.png (the chart view comparing those runs).

    python scripts/screenshots.py [--store sqlite:///mlruns/mlflow.db] [--out docs] [--timeout 900]

Uses the repository's store (mlruns/mlflow.db) when it holds finished pipeline runs with test scores;
otherwise (or with --demo) first makes a few quick real runs of the pipeline's stages on the embedded
sample (tiny settings, about a minute each on 2 CPU cores) in a temporary folder with its own store.
Then starts `mlflow ui` like `make ui` (127.0.0.1, a free port, one worker, no job runner), drives
headless Chromium with Playwright (`pip install playwright`; it uses the system's `chromium`, never
downloads a browser), saves the PNGs and stops the server. Bounded by --timeout in all.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from unet_ssl.tracking import mlflow_runs  # noqa: E402

# Quick demo executions: (pretrain.method, finetune.freeze_encoder, finetune.subset)
DEMO = [("simclr", False, 0.9), ("none", False, 0.9), ("simclr", True, 0.9), ("simclr", False, 0.1)]
TINY = {"data.image_size": 64, "data.test_fraction": 0.25, "data.val_fraction": 0.2, "data.pretrain_limit": 256,
        "pretrain.epochs": 2, "pretrain.batch_size": 64, "finetune.image_size": 64, "finetune.epochs": 8,
        "finetune.batch_size": 8, "finetune.lr": 0.005}
COLUMNS = ["test_jaccard", "test_f1", "best_val_jaccard"]


def log(message: str) -> None:
    print(f"[screenshots {time.strftime('%H:%M:%S')}] {message}", flush=True)


def store_has_pipeline_runs(db: Path) -> bool:
    if not db.is_file():
        return False
    try:
        with sqlite3.connect(db) as con:
            return con.execute(
                "select count(*) from runs r join tags t on t.run_uuid = r.run_uuid "
                "and t.key = 'role' and t.value = 'pipeline' "
                "join latest_metrics m on m.run_uuid = r.run_uuid and m.key = 'test_jaccard' "
                "where r.status = 'FINISHED' and r.lifecycle_stage = 'active'").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def set_dotted(params: dict, dotted: str, value) -> None:
    *groups, key = dotted.split(".")
    node = params
    for group in groups:
        node = node.setdefault(group, {})
    node[key] = value


def make_demo_runs(work: Path) -> str:
    """Real runs of the pipeline's stages on the embedded sample, one execution per DEMO setting."""
    import yaml

    ws = work / "ws"
    (ws / "data" / "raw").mkdir(parents=True)
    shutil.copy2(REPO / "dvc.yaml", ws / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted, value in TINY.items():
        set_dotted(params, dotted, value)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in ("oxford-iiit-pet", "pretrain"):
        shutil.copytree(REPO / "sample" / name, ws / "data" / "raw" / name)
    for path in (ws / "data").rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    store = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = store
    os.chdir(ws)
    from unet_ssl.config import load_params
    from unet_ssl.stages import evaluate, finetune, prepare, pretrain, validate

    base = load_params(ws / "params.yaml")
    for i, (method, frozen, subset) in enumerate(DEMO):
        run_params = yaml.safe_load(yaml.safe_dump(base))
        set_dotted(run_params, "pretrain.method", method)
        set_dotted(run_params, "finetune.freeze_encoder", frozen)
        set_dotted(run_params, "finetune.subset", subset)
        os.environ[mlflow_runs.EXECUTION_ENV] = f"screenshots-{os.getpid()}-{i}"
        log(f"demo execution {i + 1}/{len(DEMO)}: {mlflow_runs.describe(run_params)}")
        stages = [prepare.run_pets, prepare.run_pretrain, validate.run] if i == 0 else []
        for stage in [*stages, pretrain.run, finetune.run, evaluate.run]:
            stage(run_params)
    os.environ.pop(mlflow_runs.EXECUTION_ENV, None)
    os.chdir(REPO)
    return store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(store: str, port: int) -> subprocess.Popen:
    """`mlflow ui` as `make ui` starts it (one worker, no job runner), in its own process group."""
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow) if mlflow.exists() else "mlflow", "ui", "--backend-store-uri", store, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow ui exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    return server
        except OSError:
            time.sleep(1)
    stop(server)
    raise RuntimeError("mlflow ui did not answer within 120 s")


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise SystemExit("no Chromium found: apt-get install -y chromium")


def view_url(base: str, **state: str) -> str:
    """The runs page of the Model training view with URL state: pipeline runs only, best test Jaccard first."""
    root, _, query = base.partition("?")
    state = {"searchFilter": "tags.role = 'pipeline'", "orderByKey": "metrics.`test_jaccard`", "orderByAsc": "false",
             "startTime": "ALL", **dict(urllib.parse.parse_qsl(query)), **state}
    return f"{root}/runs?" + urllib.parse.urlencode(state, quote_via=urllib.parse.quote)


def tidy(page, sidebar: bool = True) -> None:
    """Closes the assistant side panel (if shown) and the sidebar, so the runs get the width."""
    buttons = [page.get_by_role("button", name="Close", exact=True)]
    if sidebar:
        buttons.append(page.get_by_role("button", name="Toggle sidebar"))
    for button in buttons:
        try:
            if button.first.is_visible():
                button.first.click(timeout=2000)
        except Exception:  # noqa: BLE001 (cosmetic only)
            pass


def widen(page, col_id: str, pixels: int) -> None:
    """Drags the right edge of a runs-table column header (run names are long)."""
    handle = page.locator(f".ag-header-cell[col-id='{col_id}'] .ag-header-cell-resize").first
    box = handle.bounding_box()
    if box:
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        handle.hover()
        page.mouse.down()
        page.mouse.move(x + 20, y, steps=5)
        page.mouse.move(x + pixels, y, steps=10)
        page.mouse.up()


def widen_run_list(page, pixels: int) -> None:
    """Drags the splitter between the run list and the charts, so run names show in full."""
    rect = page.evaluate("""() => { for (const e of document.querySelectorAll('div')) {
        const r = e.getBoundingClientRect();
        if (getComputedStyle(e).cursor === 'ew-resize' && r.height > 300) return {x: r.x + r.width / 2, y: r.y + 150}; }
        return null; }""")
    if rect:
        page.mouse.move(rect["x"], rect["y"])
        page.mouse.down()
        page.mouse.move(rect["x"] + 20, rect["y"], steps=5)
        page.mouse.move(rect["x"] + pixels, rect["y"], steps=10)
        page.mouse.up()
        page.mouse.move(rect["x"] + pixels + 400, 40)  # off the splitter, so it is not highlighted


def select_columns(page, show: list[str], hide: list[str]) -> None:
    """Ticks (or unticks) columns in the runs table's column selector; the choice is kept in the
    browser's local storage, not in the URL."""
    page.get_by_role("button", name="Columns", exact=True).click()
    search = page.get_by_placeholder("Search columns")
    for name, wanted in [*((n, True) for n in show), *((n, False) for n in hide)]:
        search.fill(name)
        title = page.locator(".du-bois-light-tree-title", has_text=re.compile(f"^{re.escape(name)}$"))
        node = page.locator(".du-bois-light-tree-treenode").filter(has=title).first
        box = node.locator(".du-bois-light-tree-checkbox")
        if ("checkbox-checked" in (box.get_attribute("class") or "")) != wanted:
            box.click()
    page.keyboard.press("Escape")


def shoot(url: str, out: Path, timeout_ms: int) -> list[Path]:
    from playwright.sync_api import sync_playwright

    table, charts = out / "mlflow-runs-table.png", out / "mlflow-charts.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.set_default_timeout(timeout_ms)
        page.goto(view_url(url))
        page.get_by_role("gridcell").filter(has_text="pipeline ").first.wait_for()
        tidy(page)
        select_columns(page, COLUMNS, ["Source", "Models"])
        widen(page, "attributes.`Run Name`", 120)
        page.get_by_text("Expand rows").click()  # every dataset of a run, one a line
        page.wait_for_timeout(1500)
        page.screenshot(path=str(table))
        log(f"wrote {table}")
        page.goto(view_url(url, compareRunsMode="CHART"))
        page.get_by_text("test_jaccard").first.wait_for()
        tidy(page, sidebar=False)  # the toggle is remembered
        widen_run_list(page, 130)
        page.wait_for_timeout(3000)
        page.screenshot(path=str(charts))
        log(f"wrote {charts}")
        browser.close()
    return [table, charts]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", help="tracking URI (default: mlruns/mlflow.db if it has pipeline runs)")
    parser.add_argument("--demo", action="store_true", help="make quick demo runs in a temporary store first")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--timeout", type=int, default=900, help="seconds for everything")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError(f"over {args.timeout} s")))
    signal.alarm(args.timeout)
    work = Path(tempfile.mkdtemp(prefix="unet-ssl-screenshots-"))
    server = None
    try:
        store = args.store
        if store is None and not args.demo and store_has_pipeline_runs(REPO / "mlruns" / "mlflow.db"):
            store = f"sqlite:///{REPO / 'mlruns' / 'mlflow.db'}"
        if store is None:
            log(f"making {len(DEMO)} quick demo executions in {work}")
            store = make_demo_runs(work)
        port = free_port()
        log(f"starting mlflow ui on 127.0.0.1:{port} for {store}")
        server = start_ui(store, port)
        url = mlflow_runs.ui_url(store, port=port)
        log(f"Model training view: {url}")
        args.out.mkdir(parents=True, exist_ok=True)
        shoot(url, args.out, timeout_ms=60_000)
    finally:
        if server is not None:
            stop(server)
            log("stopped mlflow ui")
        signal.alarm(0)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
