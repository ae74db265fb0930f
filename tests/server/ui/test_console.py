"""The web console (``/ui``) in a real headless Chromium against a real ``vpetl serve`` (uvicorn) with real
published adapters: pages load without console errors, the task list is the API's, a clip dropped in "Try it" gets
``/predict``'s top-1, a rollback from the UI moves the pointer, API errors show the API's message, and 1,000 tasks
are paged. Set ``VPETL_UI_SCREENSHOTS=DIR`` to save a PNG of each page there (docs/console/ holds the README's).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.conftest import BACKBONE, ServerProcess, db_url, flush, make_adapter, vpetl_executable
from tests.server.ui.conftest import console_errors, drop_file, drop_files, wait_for

pytestmark = pytest.mark.integration

TOKEN = "console-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OCTET = {"Content-Type": "application/octet-stream"}
SCREENSHOTS = os.environ.get("VPETL_UI_SCREENSHOTS")


@pytest.fixture(scope="module")
def server(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    url = db_url(redis_server_url, 10)
    flush(url)
    tmp = tmp_path_factory.mktemp("console")
    args = ["--redis-url", url, "--backbone", BACKBONE, "--data-dir", str(tmp / "data")]
    proc = ServerProcess(args, tmp / "server.log", env={"VPETL_ADMIN_TOKEN": TOKEN}).start()
    proc.redis_url = url  # type: ignore[attr-defined]
    proc.data_dir = tmp / "data"  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        proc.stop()
        flush(url)


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30.0, headers=AUTH) as client:
        yield client


@pytest.fixture(scope="module")
def published(http: httpx.Client) -> dict[str, Any]:
    """cats v1..v3 (val top-1 0.51/0.52/0.53 in their metrics, v3 current) and dogs v1, uploaded over HTTP."""
    for task, seeds in (("cats", (1, 2, 3)), ("dogs", (4,))):
        for seed in seeds:
            r = http.put(f"/adapters/{task}", content=make_adapter(task, seed=seed), headers=OCTET)
            assert r.status_code == 201, r.text
    return {a["task"]: a for a in http.get("/adapters").json()["adapters"]}


@pytest.fixture
def page(browser: Any, server: ServerProcess, published: dict[str, Any]) -> Iterator[Any]:
    """The browser at the console's origin with the token typed in (this tab's sessionStorage, as the token
    dialog stores it) and an empty console log."""
    browser.get(server.url + "/ui/")
    browser.execute_script("sessionStorage.clear(); sessionStorage.setItem('vpetl.token', arguments[0])", TOKEN)
    console_errors(browser)  # drain what earlier tests left
    yield browser


def dialog_open(driver: Any, dialog_id: str) -> bool:
    return driver.find_element("id", dialog_id).get_attribute("open") is not None


def open_page(driver: Any, server: ServerProcess, fragment: str, ready_css: str) -> Any:
    driver.get(f"{server.url}/ui/#/{fragment}")
    driver.refresh()  # a hash-only change would not reload the module scripts
    return wait_for(f"{ready_css} on #/{fragment}", lambda: driver.find_elements("css selector", ready_css))


def shot(driver: Any, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SCREENSHOTS) / f"{name}.png"))


def text_of(driver: Any, css: str) -> str:
    return driver.find_element("css selector", css).text


# ------------------------------------------------------------------------------------------------------- tests
def test_console_is_served_with_a_strict_policy(server: ServerProcess) -> None:
    index = httpx.get(server.url + "/ui/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in index.headers["content-security-policy"]
    assert index.headers["x-frame-options"] == "DENY"
    assert httpx.get(server.url + "/ui").headers.get("location") == "/ui/"
    script = httpx.get(server.url + "/ui/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    for name in ("nope.js", "..%2Fapp.py", "%2e%2e%2fsettings.py"):
        missing = httpx.get(server.url + "/ui/" + name)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found", name
    assert not any(p.startswith("/ui") for p in httpx.get(server.url + "/openapi.json").json()["paths"])


PAGES = [
    ("tasks", "#tasks-table tbody tr"),
    ("task/cats", "#versions-table tbody tr"),
    ("jobs", "#job-counts"),
    ("datasets?task=cats", "#clip-total"),
    ("try?task=cats", "#try-drop"),
    ("deployment", "#replicas-table tbody tr"),
]


@pytest.mark.parametrize(("fragment", "ready_css"), PAGES, ids=[p[0].split("?")[0] for p in PAGES])
def test_pages_load_without_console_errors(page: Any, server: ServerProcess, fragment: str, ready_css: str) -> None:
    open_page(page, server, fragment, ready_css)
    assert page.find_element("id", "error").get_attribute("hidden") is not None, text_of(page, "#error")
    shot(page, fragment.split("?")[0].replace("/", "-"))
    assert console_errors(page) == []


def test_task_list_is_the_apis(page: Any, server: ServerProcess, published: dict[str, Any]) -> None:
    rows = open_page(page, server, "tasks", "#tasks-table tbody tr")
    shown = {row.get_attribute("data-task"): row.find_elements("tag name", "td") for row in rows}
    assert set(shown) == set(published) == {"cats", "dogs"}
    for task, info in published.items():
        cells = [c.text for c in shown[task]]
        assert cells[1] == f"v{info['version']}"
        assert cells[2] == info["method"]
        assert cells[3] == f"{info['trainable_params']:,}"
        assert cells[5] == f"{info['metrics']['val_top1'] * 100:.1f}%"
        assert cells[6] == str(info["num_versions"])
    assert text_of(page, "#page-range") == "1–2 of 2 tasks"


def test_task_history_charts_each_versions_top1(page: Any, server: ServerProcess, http: httpx.Client) -> None:
    open_page(page, server, "task/cats", "#versions-table tbody tr")
    versions = http.get("/adapters/cats").json()["versions"]
    dots = page.find_elements("css selector", "#top1-chart circle.dot")
    plotted = sorted((int(d.get_attribute("data-x")), float(d.get_attribute("data-y"))) for d in dots)
    assert plotted == [(v["version"], v["metrics"]["val_top1"]) for v in versions]


def test_try_it_shows_predicts_top1(page: Any, server: ServerProcess, http: httpx.Client,
                                    clips: dict[str, bytes]) -> None:  # fmt: skip
    open_page(page, server, "try?task=cats", "#try-drop")
    for name in ("ok", "ok2", "ok3"):
        expected = http.post("/predict", params={"task": "cats", "topk": 5}, content=clips[name],
                             headers={"Content-Type": "video/mp4"}).json()  # fmt: skip
        drop_file(page, "try-drop", clips[name], f"{name}.mp4")
        label = wait_for("the top-1", lambda: page.find_elements("css selector", "#try-top1 .top1-label"))[0]
        assert label.text == expected["predictions"][0]["label"]
        assert f"cats v{expected['version']}" in text_of(page, "#try-top1")
        bars = page.find_elements("css selector", "#try-result svg.bars rect")
        assert len(bars) == len(expected["predictions"])
        assert len(page.find_elements("css selector", "#try-timing td")) == 4
        shot(page, "try-result")
        page.execute_script("document.getElementById('try-result').replaceChildren()")
    assert console_errors(page) == []


def test_api_errors_show_the_apis_message(page: Any, server: ServerProcess, http: httpx.Client,
                                          clips: dict[str, bytes]) -> None:  # fmt: skip
    open_page(page, server, "try?task=cats", "#try-drop")
    expected = http.post(
        "/predict", params={"task": "cats"}, content=clips["text"], headers={"Content-Type": "video/mp4"}
    )
    assert expected.status_code == 400
    drop_file(page, "try-drop", clips["text"], "notes.mp4")
    shown = wait_for("the error", lambda: page.find_elements("css selector", "#try-result .failed"))[0]
    assert shown.text == expected.json()["error"]["message"]
    # an unknown task: the page itself reports the API's 404 message
    missing = http.get("/adapters/no-such-task").json()["error"]
    open_page(page, server, "task/no-such-task", "#error:not([hidden])")
    assert text_of(page, "#error") == f"{missing['message']} ({missing['code']})"


def test_rollback_from_the_ui_moves_the_pointer(page: Any, server: ServerProcess, http: httpx.Client) -> None:
    assert http.get("/adapters/cats").json()["version"] == 3
    page.execute_script("sessionStorage.clear()")
    console_errors(page)
    prompts = 0

    def answer_prompt() -> None:
        # the first request the server refuses with 401 asks for the token: reads too where the server wants a
        # key for them, else the rollback itself
        nonlocal prompts
        prompts += 1
        assert http.get("/adapters/cats").json()["version"] == 3  # nothing changed before the token
        page.find_element("id", "token-input").send_keys(TOKEN)
        page.find_element("id", "token-ok").click()

    page.get(f"{server.url}/ui/#/task/cats")
    page.refresh()
    wait_for("the task page or the token dialog", lambda: dialog_open(page, "token-dialog")
             or page.find_elements("css selector", "#versions-table tbody tr"))  # fmt: skip
    if dialog_open(page, "token-dialog"):
        answer_prompt()
    wait_for("the versions", lambda: page.find_elements("css selector", "button.rollback[data-version='1']"))
    page.find_element("css selector", "button.rollback[data-version='1']").click()
    wait_for("the confirm dialog", lambda: dialog_open(page, "confirm-dialog"))
    page.find_element("id", "confirm-ok").click()
    wait_for("v1 serving or the token dialog", lambda: dialog_open(page, "token-dialog")
             or text_of(page, "#current-version") == "v1")  # fmt: skip
    if dialog_open(page, "token-dialog"):
        answer_prompt()
    wait_for("v1 serving", lambda: text_of(page, "#current-version") == "v1")
    assert prompts == 1
    assert http.get("/adapters/cats").json()["version"] == 1
    # kept in this tab's session only: not in localStorage, not in a cookie
    assert page.execute_script("return sessionStorage.getItem('vpetl.token')") == TOKEN
    assert page.execute_script("return localStorage.length") == 0 and page.get_cookies() == []
    # the next write goes without asking again
    page.find_element("css selector", "button.rollback[data-version='3']").click()
    page.find_element("id", "confirm-ok").click()
    wait_for("v3 serving", lambda: text_of(page, "#current-version") == "v3")
    assert not dialog_open(page, "token-dialog")
    assert http.get("/adapters/cats").json()["version"] == 3
    # the only console errors are the refusals before the token was typed (Chromium logs each 401 response)
    errors = console_errors(page)
    assert errors and all("401 (Unauthorized)" in e["message"] for e in errors), errors


def test_wrong_token_is_refused_and_store_unchanged(page: Any, server: ServerProcess, http: httpx.Client) -> None:
    wrong = {"Authorization": "Bearer not-the-token"}
    page.execute_script("sessionStorage.setItem('vpetl.token', 'not-the-token')")
    page.get(f"{server.url}/ui/#/task/dogs")
    page.refresh()
    wait_for("the task page or an error", lambda: page.find_elements("css selector", "#versions-table tbody tr")
             or page.find_elements("css selector", "#error:not([hidden])"))  # fmt: skip
    if page.find_elements("css selector", "#versions-table tbody tr"):  # reads are open: the delete is refused
        page.find_element("id", "delete-task").click()
        page.find_element("id", "confirm-ok").click()
        refused = httpx.delete(server.url + "/adapters/dogs", headers=wrong)
    else:  # the server wants a valid key for reads too: the page load itself is refused
        refused = httpx.get(server.url + "/adapters/dogs", headers=wrong)
    assert refused.status_code == 403
    error = refused.json()["error"]
    wait_for("the API's message", lambda: text_of(page, "#error") == f"{error['message']} ({error['code']})")
    assert http.get("/adapters/dogs").json()["num_versions"] == 1  # still there, unchanged


def test_upload_by_drop_then_train_and_follow_the_job(page: Any, server: ServerProcess, http: httpx.Client,
                                                     tmp_path: Path) -> None:  # fmt: skip
    from vpetl.data.synth import synthesize

    root = synthesize("appearance", tmp_path / "synth", clips_per_class=3, seed=0, size=32, frames=(8, 10))
    labels = sorted(p.name for p in root.iterdir() if p.is_dir())[:3]
    open_page(page, server, "datasets?task=birds", "#dataset-drop")
    for label in labels:
        files = sorted((root / label).glob("*.mp4"))
        label_field = page.find_element("id", "upload-label")
        label_field.clear()
        label_field.send_keys(label)
        for split, chosen in (("train", files[1:]), ("val", files[:1])):
            page.find_element("css selector", f"#upload-split option[value='{split}']").click()
            before = len(page.find_elements("css selector", "#upload-log li.ok"))
            drop_files(page, "dataset-drop", [(f.read_bytes(), f.name) for f in chosen])
            wait_for(f"{label}/{split} stored", lambda n=before + len(chosen): len(
                page.find_elements("css selector", "#upload-log li.ok")) == n)  # fmt: skip
    counts = http.get("/datasets/birds").json()["counts"]
    assert counts == {"train": dict.fromkeys(labels, 2), "val": dict.fromkeys(labels, 1)}
    wait_for("the counts table", lambda: text_of(page, "#clip-total") == "9 clips for birds")
    cells = {row.get_attribute("data-label"): [c.text for c in row.find_elements("css selector", "td.num")]
             for row in page.find_elements("css selector", "#counts-table tbody tr[data-label]")}  # fmt: skip
    assert cells == {label: ["2", "1"] for label in labels}
    shot(page, "datasets")

    # queue a job from the Jobs page; a real `vpetl worker --json` trains and publishes it
    open_page(page, server, "jobs", "#job-form")
    page.find_element("id", "job-task").send_keys("birds")
    page.find_element("css selector", "#job-method option[value='linear']").click()
    epochs = page.find_element("id", "job-epochs")
    epochs.clear()
    epochs.send_keys("3")
    page.find_element("css selector", "#job-form button[type=submit]").click()
    row = wait_for("the queued job", lambda: page.find_elements("css selector", "#jobs-table tbody tr[data-job]"))[0]
    job_id = row.get_attribute("data-job")
    assert http.get(f"/jobs/{job_id}").json()["params"]["task"] == "birds"
    # each epoch's progress lands 2 s after the epoch ends (the worker's test hook): time to watch it live
    env = {k: v for k, v in os.environ.items() if not k.startswith("VPETL_")}
    env |= {"VPETL_TORCH_THREADS": "1", "VPETL_TEST_EPOCH_DELAY_S": "2"}
    worker_log = (tmp_path / "worker.log").open("w")  # a file, not a pipe nobody reads while the browser waits
    worker = subprocess.Popen(
        [vpetl_executable(), "worker", "--redis-url", server.redis_url, "--data-dir", str(server.data_dir),  # type: ignore[attr-defined]
         "--backbone", BACKBONE, "--max-jobs", "1", "--threads", "1", "--device", "cpu", "--json"],
        stdout=subprocess.PIPE, stderr=worker_log, text=True, env=env,
    )  # fmt: skip
    try:
        selector = f"#jobs-table tr[data-job='{job_id}']"
        # the list polls by itself (no reload): running, with its epoch and a partial progress bar
        live = wait_for("the job running in the list", lambda: [
            r for r in page.find_elements("css selector", selector + "[data-state='running']")
            if r.find_elements("tag name", "td")[5].text in ("1/3", "2/3")], timeout=120)[0]  # fmt: skip
        bar = live.find_element("css selector", ".progress span").text
        assert bar.endswith("%") and 0 < int(bar[:-1]) < 100, bar
        shot(page, "jobs-running")
        wait_for("the job succeeded in the list", lambda: page.find_elements(
            "css selector", selector + "[data-state='succeeded']"), timeout=60)  # fmt: skip
        out, _ = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        worker_log.close()
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
    events = [json.loads(line) for line in out.splitlines()]  # stdout holds only JSON lines
    assert [e["event"] for e in events] == ["ready", "job", "stopped"], out
    job = http.get(f"/jobs/{job_id}").json()
    assert events[1]["job_id"] == job_id and events[1]["state"] == job["state"] == "succeeded"
    assert events[1]["version"] == job["version"] == http.get("/adapters/birds").json()["version"]
    assert events[2]["jobs"] == 1
    shot(page, "jobs")
    open_page(page, server, f"job/{job_id}", "#loss-chart svg")
    history = job["progress"]["history"]
    loss_dots = page.find_elements("css selector", "#loss-chart circle.dot.series-0")
    assert [(int(d.get_attribute("data-x")), float(d.get_attribute("data-y"))) for d in loss_dots] == [
        (h["epoch"], h["loss"]) for h in history
    ]
    assert len(history) == 3
    top1_dots = page.find_elements("css selector", "#accuracy-chart circle.dot.series-0")
    assert [float(d.get_attribute("data-y")) for d in top1_dots] == [h["val_top1"] for h in history]
    assert text_of(page, "#job-state") == "succeeded"
    shot(page, "job")
    assert console_errors(page) == []


def _reference_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile, written from its documentation: find the first bucket whose cumulative
    count reaches rank q·total, interpolate linearly between its lower and upper bound."""
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / (cumulative - below)
        lower, below = upper, cumulative
    return lower


def test_deployment_figures_are_the_servers(page: Any, server: ServerProcess, http: httpx.Client,
                                            clips: dict[str, bytes]) -> None:  # fmt: skip
    for name in ("ok", "ok2", "ok3", "ok4", "ok"):
        r = http.post("/predict", params={"task": "dogs"}, content=clips[name], headers={"Content-Type": "video/mp4"})
        assert r.status_code == 200
    open_page(page, server, "deployment", "#replicas-table tbody tr")
    backbone = http.get("/backbone").json()
    spec = backbone["input_spec"]
    assert text_of(page, "#backbone-name") == f"{backbone['name']} ({backbone['family']})"
    assert text_of(page, "#input-spec").startswith(f"{spec['num_frames']} frames × {spec['size']}²")
    # no prediction runs while these are read: the page's figures and the server's are the same counts
    metrics = http.get("/metrics").text
    buckets: dict[float, float] = {}
    served = 0.0
    for line in metrics.splitlines():
        if line.startswith("vpetl_predict_duration_seconds_bucket{") and 'status="200"' in line:
            le = line.split('le="')[1].split('"')[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
        if line.startswith("vpetl_predict_duration_seconds_count{") and 'status="200"' in line:
            served += float(line.rsplit(" ", 1)[1])
    ordered = sorted(buckets.items())
    assert served >= 5
    assert text_of(page, "#predictions-served") == f"{int(served):,}"
    assert text_of(page, "#latency-p50") == f"{_reference_quantile(0.5, ordered) * 1000:.1f} ms"
    assert text_of(page, "#latency-p99") == f"{_reference_quantile(0.99, ordered) * 1000:.1f} ms"
    replicas = http.get("/readyz").json()["replicas"]
    hits = sum(r["cache"]["hits"] for r in replicas)
    misses = sum(r["cache"]["misses"] for r in replicas)
    assert hits + misses > 0
    assert text_of(page, "#cache-hit-rate") == f"{hits / (hits + misses) * 100:.1f}%"
    assert text_of(page, "#replica-count") == str(len(replicas))
    shot(page, "deployment")
    assert console_errors(page) == []


def test_a_thousand_tasks_are_paged(page: Any, server: ServerProcess, http: httpx.Client) -> None:
    """Last in the module: it adds 1,000 tasks (straight into the store: publishing them over HTTP would validate
    each for minutes; the listing the console pages through is the same)."""
    from vpetl.store import AdapterStore

    record = http.get("/adapters/dogs").json()
    data = http.get("/adapters/dogs/download").content
    meta = {k: record[k] for k in ("method", "trainable_params", "num_classes", "metrics", "backbone",
                                    "backbone_sha256", "labels")}  # fmt: skip
    store = AdapterStore(server.redis_url)  # type: ignore[attr-defined]
    try:
        for i in range(1000):
            store.publish(f"bulk-{i:04d}", data, meta)
    finally:
        store.close()
    total = http.get("/adapters", params={"limit": 1}).json()["total"]
    assert total >= 1002
    rows = open_page(page, server, "tasks", "#tasks-table tbody tr")
    assert len(rows) == 50
    assert text_of(page, "#page-range") == f"1–50 of {total:,} tasks"
    first_page = [r.get_attribute("data-task") for r in rows]
    assert first_page == [a["task"] for a in http.get("/adapters", params={"limit": 50}).json()["adapters"]]
    shot(page, "tasks-1000")
    page.find_element("id", "page-next").click()
    wait_for("page 2", lambda: text_of(page, "#page-range") == f"51–100 of {total:,} tasks")
    second = [r.get_attribute("data-task") for r in page.find_elements("css selector", "#tasks-table tbody tr")]
    cursor = http.get("/adapters", params={"limit": 50}).json()["next_cursor"]
    expected = http.get("/adapters", params={"limit": 50, "cursor": cursor}).json()["adapters"]
    assert second == [a["task"] for a in expected]
    page.find_element("id", "page-prev").click()
    wait_for("page 1 again", lambda: text_of(page, "#page-range") == f"1–50 of {total:,} tasks")
    # the prefix filter asks the API for the matching names only
    box = page.find_element("id", "task-prefix")
    box.send_keys("bulk-09")
    box.submit()
    wait_for("the filtered page", lambda: text_of(page, "#page-range") == "1–50 of 100 tasks")
    assert console_errors(page) == []


def test_open_mode_writes_pass_the_loopback_guard(browser: Any, redis_server_url: str, tmp_path: Path) -> None:
    """A server with no token (``vpetl up``): the console's own writes carry its origin, which the loopback guard
    accepts, so a rollback and a delete need no token and no prompt."""
    url = db_url(redis_server_url, 15)
    flush(url)
    args = ["--redis-url", url, "--backbone", BACKBONE, "--data-dir", str(tmp_path / "data")]
    proc = ServerProcess(args, tmp_path / "server.log").start()
    try:
        with httpx.Client(base_url=proc.url, timeout=30.0) as client:
            for seed in (1, 2):
                r = client.put("/adapters/open", content=make_adapter("open", seed=seed), headers=OCTET)
                assert r.status_code == 201, r.text
            browser.get(proc.url + "/ui/")
            browser.execute_script("sessionStorage.clear()")
            console_errors(browser)
            open_page(browser, proc, "task/open", "button.rollback[data-version='1']")
            browser.find_element("css selector", "button.rollback[data-version='1']").click()
            browser.find_element("id", "confirm-ok").click()
            wait_for("v1 serving", lambda: text_of(browser, "#current-version") == "v1")
            assert not dialog_open(browser, "token-dialog")
            assert client.get("/adapters/open").json()["version"] == 1
            # delete: confirmed in the dialog, then the task is gone and the console is back on the list
            browser.find_element("id", "delete-task").click()
            browser.find_element("id", "confirm-ok").click()
            wait_for("the task list", lambda: browser.find_elements("id", "no-tasks"))
            assert text_of(browser, "#error") == "open deleted."
            gone = client.get("/adapters/open")
            assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_task"
            assert console_errors(browser) == []
    finally:
        proc.stop()
        flush(url)
