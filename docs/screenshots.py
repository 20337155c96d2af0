"""Regenerate the README's MLflow screenshots (docs/img/*.png) from a real session: a small sweep and a single run in a
temporary folder, ``mlflow server`` on loopback, and the pages a user opens, in headless Chromium.

    python docs/screenshots.py               # needs chromium on PATH and playwright (the dev extra)
    python docs/screenshots.py --keep DIR    # make (or reuse) the runs in DIR and keep them

Playwright drives the system's Chromium (``apt-get install chromium``); no browser is downloaded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

IMG = Path(__file__).resolve().parent / "img"
ML_VIEW = "?workflowType=machine_learning"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
SWEEP = ["-m", "loss=cross_entropy,gce,sce", "task.label_noise=0.4", "seed=0,1,2", "trainer.max_epochs=20",
         "experiment=noise_study"]
SINGLE = ["loss=sce", "task.label_noise=0.4", "trainer.max_epochs=30", "logger.register_as=digits-sce"]
WAIT_MS = 120_000


def rmlab(args: list[str], cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "rmlab", *args, "trainer.enable_progress_bar=false"], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL)


def serve(store: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--host",
                               "127.0.0.1", "--port", str(port), "--workers", "1"],
                              env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        try:
            urllib.request.urlopen(base + "/health", timeout=5).read()
            return server, base
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.terminate()
                raise SystemExit("mlflow server did not start")
            time.sleep(0.5)


def small_png(path: Path) -> None:
    """A palette PNG: UI screenshots have few colours, so 256 keep them sharp at a fraction of the size."""
    from PIL import Image

    with Image.open(path) as image:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def shoot(base: str, client, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    study = client.get_experiment_by_name("noise_study").experiment_id
    runs = client.search_runs([study])
    parent = next(r for r in runs if r.data.tags.get("rmlab.role") == "parent")
    digits = client.get_experiment_by_name("digits").experiment_id
    single = client.search_runs([digits])[0]
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})

        def close_assistant() -> None:
            close = page.get_by_role("button", name="Close")
            if close.count():
                close.first.click()
                page.wait_for_timeout(500)

        def save(name: str) -> None:
            page.wait_for_timeout(2500)  # charts animate in
            page.screenshot(path=out / name)
            small_png(out / name)
            print(f"wrote {out / name}")

        page.goto(f"{base}/#/experiments/{study}/runs{ML_VIEW}")
        page.get_by_text(parent.info.run_name).first.wait_for(timeout=WAIT_MS)
        close_assistant()
        page.get_by_role("row").filter(has_text=parent.info.run_name).locator("button").first.click()
        page.get_by_text(runs[0].info.run_name if runs[0] != parent else runs[1].info.run_name).first.wait_for(
            timeout=WAIT_MS)
        save("runs.png")

        page.goto(f"{base}/#/experiments/{digits}/runs/{single.info.run_id}{ML_VIEW}")
        page.get_by_role("heading", name=single.info.run_name).wait_for(timeout=WAIT_MS)
        close_assistant()
        page.get_by_text("Datasets", exact=True).first.wait_for(timeout=WAIT_MS)
        save("run-overview.png")

        page.goto(f"{base}/#/experiments/{digits}/runs/{single.info.run_id}/model-metrics{ML_VIEW}")
        page.locator(".js-plotly-plot").first.wait_for(timeout=WAIT_MS)
        close_assistant()
        # Chart against the epoch (the gear's X-axis menu), from the train section on.
        page.get_by_role("button", name="Configure charts").click()
        page.get_by_role("menuitem", name="Metric").hover()
        page.keyboard.press("ArrowRight")  # a mouse move to the submenu would close it
        epoch = page.get_by_role("menuitemcheckbox", name="epoch", exact=True)
        epoch.focus()
        page.keyboard.press("Enter")
        page.keyboard.press("Escape")
        page.keyboard.press("Escape")
        page.get_by_text("train", exact=True).first.evaluate("el => el.scrollIntoView({block: 'start'})")
        page.mouse.wheel(0, -60)
        page.mouse.move(640, 780)  # no tooltip in the picture
        save("run-metrics.png")

        page.goto(f"{base}/#/experiments/{study}/runs/{parent.info.run_id}/artifacts/summary.png{ML_VIEW}")
        page.locator("img[src^='blob:']").first.wait_for(timeout=WAIT_MS)
        close_assistant()
        save("sweep-summary.png")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="make the runs in this folder and keep them")
    args = parser.parse_args()
    from mlflow.tracking import MlflowClient

    cwd = args.keep or Path(tempfile.mkdtemp(prefix="rmlab-shots-"))
    cwd.mkdir(parents=True, exist_ok=True)
    if not (cwd / "mlflow.db").exists():
        rmlab(SWEEP, cwd)
        rmlab(SINGLE, cwd)
    store = f"sqlite:///{cwd.resolve() / 'mlflow.db'}"
    server, base = serve(store)
    try:
        IMG.mkdir(exist_ok=True)
        shoot(base, MlflowClient(store), IMG)
    finally:
        server.terminate()
        server.wait()
        if not args.keep:
            shutil.rmtree(cwd, ignore_errors=True)


if __name__ == "__main__":
    main()
