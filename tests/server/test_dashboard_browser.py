"""The dashboard in a real browser: headless Chromium (driven by selenium through ``chromedriver``) opens
``/dashboard`` on a real server while agent workflows run, sees the programs appear (and never another tenant's),
their nodes advance in the graph, the timeline fill in and the KV chart move, and saves screenshots; signs in with
the form; stays responsive with 500 programs.

Screenshots go to ``$PLAIT_SCREENSHOTS_DIR`` when it is set (the committed ones:
``bench/results/dashboard_2026-12-07``), else to the test's tmp_path. Needs ``chromium`` and ``chromedriver``
(Debian: ``apt-get install -y chromium chromium-driver``) and the ``selenium`` package (the ``dev`` extra); skipped
with the reason where they are missing. The page redraws every second, so each read of it is one script (no element
is held across a redraw).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server.test_dashboard_api import agent_workflow, dashboard_server, submit, tool_workflow

selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Chromium and chromedriver on PATH (Debian: apt-get install -y chromium chromium-driver)",
)
WINDOW = (1500, 1500)


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("PLAIT_SCREENSHOTS_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def read(driver: Any, script: str) -> Any:
    """The value of ``script`` (a JavaScript expression) evaluated on the page, in one step."""
    return driver.execute_script(f"return {script};")


def text_of(driver: Any, element_id: str) -> str:
    return read(driver, f"(e => e ? e.textContent : '')(document.getElementById({element_id!r}))")


def eventually(driver: Any, check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    """Poll ``check`` (which reads the page) until it returns something truthy; its value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; the page's error line: {text_of(driver, 'error')!r}")
        time.sleep(0.1)


def listed_ids(driver: Any) -> list[str]:
    return read(driver, "[...document.querySelectorAll('#programs tbody tr')].map(r => r.dataset.programId)")


def listed_states(driver: Any) -> dict[str, str]:
    return read(
        driver,
        "Object.fromEntries([...document.querySelectorAll('#programs tbody tr')]"
        ".map(r => [r.dataset.programId, r.querySelector('.state').textContent]))",
    )


def node_states(driver: Any) -> dict[str, str]:
    return read(
        driver,
        "Object.fromEntries([...document.querySelectorAll('#graph svg g.node')]"
        ".map(g => [g.dataset.node, g.dataset.state]))",
    )


def span_kinds(driver: Any) -> set[str]:
    return set(read(driver, "[...document.querySelectorAll('#timeline svg rect.span')].map(r => r.dataset.kind)"))


def kv_chart(driver: Any) -> dict[str, int]:
    """The KV chart's sample count and peak of held slots (zeros before it is drawn)."""
    return read(
        driver,
        "(c => c ? {samples: +c.dataset.samples, held: +c.dataset.peakHeld} : {samples: 0, held: 0})"
        "(document.querySelector('#kv svg.kv-chart'))",
    )


def test_the_page_follows_running_programs_their_nodes_and_the_kv(browser: Any, shots: Path) -> None:
    with dashboard_server(kv_slots=256) as server, server.client("key-a") as a, server.client("key-b") as b:
        browser.get(f"{server.url}/dashboard?key=key-a")
        assert browser.current_url == f"{server.url}/dashboard"  # the key left the address bar
        assert text_of(browser, "tenant") == "a"
        start = eventually(browser, lambda: (chart := kv_chart(browser))["samples"] >= 2 and chart, "KV samples")
        assert start["held"] == 0  # a fresh engine holds no KV
        eventually(browser, lambda: "plan" in text_of(browser, "policy"), "the effective policy")
        policy = browser.find_element(By.CSS_SELECTOR, "details > summary")
        policy.click()  # shown in the first screenshot, folded away for the others
        browser.save_screenshot(str(shots / "01_idle_policy.png"))
        policy.click()

        other = submit(b, agent_workflow("tenant-b-program", tool_s=0.5))
        programs = [submit(a, agent_workflow(f"research-{i}", tool_s=2.0, max_tokens=24)) for i in range(3)]
        eventually(browser, lambda: set(programs) <= set(listed_ids(browser)), "the programs in the list")
        assert other not in listed_ids(browser)

        browser.find_element(By.CSS_SELECTOR, f"#programs tbody tr[data-program-id='{programs[0]}']").click()
        eventually(browser, lambda: programs[0] in text_of(browser, "detail-title"), "the program's detail")
        seen: list[dict[str, str]] = []

        def tools_running() -> bool:
            seen.append(node_states(browser))
            return seen[-1].get("search") == "running" and seen[-1].get("plan") == "done"

        eventually(browser, tools_running, "the tools to run")
        assert seen[-1]["answer"] == "pending"
        assert "running" in span_kinds(browser)  # the running tools drawn as live spans
        eventually(browser, lambda: kv_chart(browser)["held"] > 0, "the KV chart to move")
        browser.save_screenshot(str(shots / "02_running.png"))

        def all_done() -> bool:
            seen.append(node_states(browser))
            return bool(seen[-1]) and set(seen[-1].values()) == {"done"}

        eventually(browser, all_done, "every node to finish")
        assert sorted(seen[-1]) == ["answer", "browse", "plan", "search"]
        kinds = eventually(
            browser,
            lambda: (found := span_kinds(browser)) and "running" not in found and "program" in found and found,
            "the final timeline",
        )
        assert {"queued", "prefill", "decode", "tool", "program"} <= kinds
        end = kv_chart(browser)
        assert end["samples"] > start["samples"] and end["held"] > 0
        states = read(browser, "[...document.querySelectorAll('#nodes tbody tr .state')].map(s => s.textContent)")
        assert states == ["done"] * 4

        href = read(browser, "document.getElementById('trace-link').href")
        assert read(browser, "document.getElementById('trace-link').getAttribute('download')") == (
            f"plait-trace-{programs[0]}.json"
        )
        trace = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {credentials: 'same-origin'}).then(r => r.json()).then(done, e => done(String(e)));",
            href,
        )
        names = {e["args"]["name"] for e in trace["traceEvents"] if e.get("name") == "process_name"}
        assert names == {programs[0]}
        assert listed_states(browser)[programs[0]] == "done"  # the list and the detail refresh together
        assert other not in listed_ids(browser)
        browser.save_screenshot(str(shots / "03_done.png"))


def test_the_login_form_signs_in_and_out(browser: Any) -> None:
    with dashboard_server() as server:
        browser.get(f"{server.url}/dashboard")
        field = browser.find_element(By.ID, "key")
        field.send_keys("wrong")
        field.submit()
        error = eventually(browser, lambda: text_of(browser, "login-error"), "the login error")
        assert "unknown API key" in error
        field = browser.find_element(By.ID, "key")
        field.send_keys("key-b")
        field.submit()
        assert eventually(browser, lambda: text_of(browser, "tenant"), "the dashboard") == "b"
        cookie = browser.get_cookie("plait_dashboard_key")
        assert cookie is not None and cookie["httpOnly"] and cookie["path"] == "/dashboard"
        assert read(browser, "document.cookie") == ""  # the page's scripts cannot read the key
        browser.find_element(By.CSS_SELECTOR, "form[action='/dashboard/logout'] button").click()
        eventually(browser, lambda: read(browser, "!!document.getElementById('key')"), "the login form again")


def test_the_page_stays_responsive_with_500_programs(browser: Any, shots: Path) -> None:
    from plait.server import TenantLimits

    limits = {"a": TenantLimits(max_concurrent_programs=1000)}
    with dashboard_server(tenant_limits=limits) as server, server.client("key-a") as a:
        ids = [submit(a, tool_workflow(f"bulk-{i:03d}", seconds=20.0)) for i in range(500)]
        started = time.monotonic()
        browser.get(f"{server.url}/dashboard?key=key-a")
        eventually(browser, lambda: len(listed_ids(browser)) == 50, "the first page of programs")
        assert time.monotonic() - started < 5.0
        assert "page 1 of 10 (500 programs, 500 running)" in text_of(browser, "page")
        assert listed_ids(browser)[0] == ids[-1]
        browser.find_element(By.ID, "next").click()
        eventually(browser, lambda: listed_ids(browser)[:1] == [ids[-51]], "the second page")
        # Still refreshing: a program cancelled now leaves the running ones (listed first) within a few polls.
        assert ids[-60] in listed_ids(browser)
        assert a.delete(f"/v1/workflows/{ids[-60]}").status_code == 200
        eventually(
            browser,
            lambda: "499 running" in text_of(browser, "page") and ids[-60] not in listed_ids(browser),
            "the list to refresh",
        )
        assert len(listed_ids(browser)) == 50  # only the visible page is in the document
        browser.save_screenshot(str(shots / "04_500_programs.png"))
