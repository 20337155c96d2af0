"""The MLflow UI as a user opens it: a tiny sweep, ``mlflow server`` on loopback, a headless Chromium (Playwright
driving the system's chromium: no browser is downloaded) on the child run's page and the parent's artifacts.

Skipped where Chromium or Playwright is missing (``.ci/run`` installs both, so CI runs it).
"""

import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import PYTHON, cli_env, stop_group

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
ML_VIEW = "?workflowType=machine_learning"  # MLflow 3 opens in its GenAI view otherwise
WAIT_MS = 90_000  # generous: a loaded CI machine renders slowly

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)"),
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (pip install playwright)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A finished 2-job sweep in a fresh store, and an MLflow server on it: (base URL, client, parent, child)."""
    cwd = tmp_path_factory.mktemp("ui")
    done = subprocess.run([PYTHON, "-m", "rmlab", "-m", "task=wine", "trainer.max_epochs=3", "seed=0,1",
                           "trainer.enable_progress_bar=false", "experiment=ui_check"],
                          cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    store = f"sqlite:///{cwd / 'mlflow.db'}"
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("ui_check").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("rmlab.role") == "parent")
    child = next(r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              # Without MLflow's job runner (worker processes for its GenAI features): faster.
                              cwd=cwd, env=cli_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=5).read()
                break
            except OSError:
                assert server.poll() is None, "mlflow server exited"
                assert time.time() < deadline, "mlflow server did not answer"
                time.sleep(0.5)
        yield base, client, parent, child
    finally:
        stop_group(server)


@pytest.fixture(scope="module")
def page(served):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 900})
        finally:
            browser.close()


def test_run_page_shows_name_param_dataset_and_metric_chart(served, page):
    base, client, parent, child = served
    experiment = child.info.experiment_id
    page.goto(f"{base}/#/experiments/{experiment}/runs/{child.info.run_id}{ML_VIEW}")
    page.get_by_role("heading", name=child.info.run_name).wait_for(timeout=WAIT_MS)
    # A param with its value, from the Parameters table of the run's overview.
    page.get_by_text("Parameters (", exact=False).first.wait_for(timeout=WAIT_MS)
    row = page.get_by_role("row").filter(has=page.get_by_text("task.name", exact=True))
    assert row.count() == 1 and "wine" in row.inner_text()
    # The datasets the run trained on (one per split): the panel names the first with its digest.
    labels = [f"wine ({i.dataset.digest})" for i in child.inputs.dataset_inputs]
    assert sum(page.get_by_text(label).count() for label in labels) >= 1
    # The metric charts: a plotly chart is drawn for the validation curves.
    page.goto(f"{base}/#/experiments/{experiment}/runs/{child.info.run_id}/model-metrics{ML_VIEW}")
    page.locator(".js-plotly-plot").first.wait_for(timeout=WAIT_MS)
    assert page.get_by_text("train", exact=True).count() >= 1  # a section of charts per metric prefix
    assert page.locator(".js-plotly-plot").count() >= 3


def test_parent_artifacts_show_the_summary_image(served, page):
    base, client, parent, child = served
    page.goto(f"{base}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}/artifacts/summary.png"
              f"{ML_VIEW}")
    page.get_by_role("heading", name=parent.info.run_name).wait_for(timeout=WAIT_MS)
    # The artifact viewer shows the selected image from a blob: URL.
    image = page.locator("img[src^='blob:']").first
    image.wait_for(timeout=WAIT_MS)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(),
                           timeout=WAIT_MS)
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [900, 576]  # 7.5 x 4.8 in at 120 dpi
    assert page.get_by_text("summary.csv").count() >= 1 and page.get_by_text("summary.md").count() >= 1
