"""rlft board driven in a real headless browser (Debian's chromium through Selenium and Debian's
chromium-driver): the runs table over a finished tiny run, its curves, the inspector's coloured
tokens, a typo'd form value showing the CLI's error, and a 3-step run launched from the form.

Every test also checks that the page fetched nothing but the board's own server.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rlft.cli import main

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"):  # CI installs them (.ci/run)
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)
if not os.environ.get("CI"):
    pytest.importorskip("selenium")
    pytest.importorskip("dash")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from rlft.board.app import create_app  # noqa: E402

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1100,760",
)
WAIT_S = 90  # pages render slowly on a loaded 2-core machine


@pytest.fixture(scope="module")
def board(token_stats_run: Path) -> Iterator[tuple[str, Any]]:
    """The board over the folder holding the finished tiny run, served on a free port."""
    from werkzeug.serving import make_server

    app = create_app(token_stats_run.parent, cwd=Path(__file__).resolve().parents[1])
    server = make_server("127.0.0.1", 0, app.server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", app
    app.board_launcher.stop_all()
    server.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or "/usr/bin/chromium"
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER or "/usr/bin/chromedriver"))
    yield driver
    driver.quit()


@pytest.fixture
def page(board: tuple[str, Any], browser: Any) -> Iterator[Callable[[str], Any]]:
    """``page(path)`` opens the board's ``path``; afterwards, every request the browser made must
    have gone to the board itself (no CDN, no fonts, nothing from the internet)."""
    base = board[0]
    browser.get_log("performance")  # drop earlier entries

    def open_(path: str) -> Any:
        browser.get(base + path)
        return browser

    yield open_
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    assert urls, "no requests recorded"
    outside = [u for u in urls if not u.startswith((base, "data:", "blob:", "about:"))]
    assert not outside, outside


def wait(browser: Any, condition: Callable[[Any], Any], timeout: float = WAIT_S) -> Any:
    return WebDriverWait(browser, timeout, poll_frequency=0.25).until(condition)


def table_rows(browser: Any) -> dict[str, dict[str, str]]:
    """The runs table: run name -> {column id: text}."""
    rows = {}
    for tr in browser.find_elements(By.CSS_SELECTOR, "#runs-table tr"):
        cells = {td.get_attribute("data-dash-column"): td.text for td in tr.find_elements(By.TAG_NAME, "td")}
        if cells.get("name"):
            rows[cells["name"]] = cells
    return rows


def test_runs_table_shows_the_finished_run(page: Callable[[str], Any], token_stats_run: Path) -> None:
    browser = page("/")
    wait(browser, lambda b: table_rows(b).get("tiny", {}).get("status") == "finished")
    row = table_rows(browser)["tiny"]
    metrics = [json.loads(line) for line in (token_stats_run / "metrics.jsonl").open()]
    best = max(m["reward/mean"] for m in metrics)
    assert (row["recipe"], row["algorithm"], row["steps"]) == ("quickstart", "grpo", "3/3")
    assert float(row["best_reward"]) == pytest.approx(best, rel=1e-3)


def test_curves_of_the_run(page: Callable[[str], Any], token_stats_run: Path) -> None:
    browser = page("/curves?runs=tiny")
    script = (
        "const g = document.querySelector('#curves-graph .js-plotly-plot'); "
        "return g && g._fullData && g._fullData.length > 0 && "  # as drawn: arrays decoded
        "g._fullData.map(t => ({name: t.name, yaxis: t.yaxis, x: Array.from(t.x), y: Array.from(t.y)}))"
    )
    traces = wait(browser, lambda b: b.execute_script(script))
    metrics = [json.loads(line) for line in (token_stats_run / "metrics.jsonl").open()]
    reward = next(t for t in traces if t.get("name") == "tiny" and t.get("yaxis") in (None, "y"))
    assert reward["x"] == [1, 2, 3]
    assert reward["y"] == pytest.approx([m["reward/mean"] for m in metrics])
    # The timing breakdown: one stacked area per part of the step that took time.
    timing = (
        "return [...document.querySelectorAll('#curves-timing .js-plotly-plot')]"
        ".map(g => g.data.map(t => t.name))"
    )
    parts = wait(browser, lambda b: b.execute_script(timing))
    assert {"rollout", "reward", "train"} <= set(parts[0])


def test_inspector_colours_each_token(page: Callable[[str], Any], token_stats_run: Path) -> None:
    browser = page("/inspect?run=tiny&step=2")
    rows = [json.loads(line) for line in (token_stats_run / "samples.jsonl").open()]
    tokens = sum(len(r["tokens"]) for r in rows if r["step"] == 2)
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "span.tok")) == tokens)
    browser.find_element(By.XPATH, "//label[contains(., 'sampler log-prob')]").click()

    script = "return [...document.querySelectorAll('span.tok')].map(s => getComputedStyle(s).backgroundColor)"
    wait(browser, lambda b: len(set(b.execute_script(script))) > 3)  # log-probs differ token to token
    title = browser.execute_script("return document.querySelector('span.tok').title")
    assert "learner_logprob" in title and "advantage" in title
    facts = browser.find_element(By.CSS_SELECTOR, ".sample-facts").text
    assert "group 0" in facts and "repeat_char" in facts


def _form_input(browser: Any, key: str) -> Any:
    return wait(browser, lambda b: b.find_element(By.NAME, key))


def _type(element: Any, text: str) -> None:
    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(Keys.BACKSPACE)
    element.send_keys(text)


def test_a_typo_in_the_form_shows_the_cli_error(
    page: Callable[[str], Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "recipe=quickstart", "trainer.max_steps=3x"]) == 2
    cli_error = capsys.readouterr().err.strip()
    assert "trainer.max_steps" in cli_error
    browser = page("/launch")
    _type(_form_input(browser, "trainer.max_steps"), "3x")
    browser.find_element(By.ID, "launch-check").click()
    wait(browser, lambda b: "config error" in b.find_element(By.ID, "launch-error").text)
    assert cli_error in browser.find_element(By.ID, "launch-error").text
    inline = browser.execute_script(
        "return [...document.querySelectorAll('pre.field-error')].filter(e => e.textContent)"
        ".map(e => [JSON.parse(e.id).key, e.textContent])"
    )
    assert [key for key, _ in inline] == ["trainer.max_steps"]  # under the field it names only
    assert cli_error in inline[0][1]


@pytest.mark.slow  # a real 3-step run: about a minute on 2 cores
def test_launch_a_3_step_run_from_the_form_and_see_it_finish(
    page: Callable[[str], Any], tiny_model_dir: Path, token_stats_run: Path
) -> None:
    browser = page("/launch")
    wait(browser, lambda b: b.find_element(By.XPATH, "//summary[starts-with(., 'model ')]")).click()
    _type(_form_input(browser, "model.path"), str(tiny_model_dir))
    _type(_form_input(browser, "trainer.max_steps"), "3")
    extra = (
        "cluster.mode=local tracking.wandb.enabled=false data.global_prompts_per_step=2 "
        "algorithm.group_size=4"
    )
    _type(browser.find_element(By.ID, "launch-extra"), extra)
    _type(browser.find_element(By.ID, "launch-name"), "launched")
    browser.find_element(By.ID, "launch-start").click()

    def state(b: Any) -> str | None:
        return b.execute_script(
            "const e = document.getElementById('launch-state'); return e && e.dataset.state"
        )

    wait(browser, lambda b: state(b) not in (None, "starting"))
    wait(
        browser,
        lambda b: (
            state(b) in ("finished", "crashed", "interrupted", "exited before it started (see the log)")
        ),
        300,
    )
    log = browser.find_element(By.ID, "launch-log").text
    assert state(browser) == "finished", log[-3000:]
    run = token_stats_run.parent / "launched"
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()] == [1, 2, 3]
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    browser = page("/")
    wait(browser, lambda b: table_rows(b).get("launched", {}).get("status") == "finished")
