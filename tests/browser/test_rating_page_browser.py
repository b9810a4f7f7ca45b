"""A real browser: headless Chromium (the system's, via the system chromedriver; nothing is
downloaded) opens the app served by `rlhflab serve`, rates and labels items with the keyboard,
undoes one, and the test reads the answers back from SQLite. It also checks that model text
containing <script> shows as text, that the phone layout does not scroll sideways, and saves
screenshots (desktop and phone) under $RLHFLAB_SCREENS (default /tmp/rlhflab-screens)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from rlhflab.human import tasks
from tests.human.conftest import XSS, write_samples
from tests.human.serving import running_server

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENS = Path(os.environ.get("RLHFLAB_SCREENS", "/tmp/rlhflab-screens"))
RATER = "Browser Ada"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run `make browser` (apt-get install chromium chromium-driver).")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    # An explicit chromedriver: Selenium Manager never runs, so nothing is downloaded.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """A served database with a rating task (one response carries a script tag) and a label task."""
    folder = tmp_path_factory.mktemp("browser-app")
    db = folder / "app.sqlite"
    samples = tasks.read_samples(write_samples(folder / "samples.jsonl", n_prompts=6))
    tasks.create_rating_task(db, samples, name="rate-me", seed=0)
    texts = folder / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": f"Review {i}: {XSS} and the rest"}) + "\n" for i in range(4)))
    tasks.create_label_task(db, str(texts), name="label-me")
    tasks.create_label_task(db, str(folder / "samples.jsonl"), kind="pairs", name="pick-me")
    with running_server(db, folder / "server.log") as server:
        yield server.url, db


def keys(driver, *sequence):
    from selenium.webdriver.common.action_chains import ActionChains

    actions = ActionChains(driver)
    for key in sequence:
        actions.send_keys(key)
    actions.perform()


def wait_for(driver, condition, timeout=15):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def progress(driver) -> str:
    return driver.find_element("id", "progress-text").text


def shown_text(driver) -> str:
    return driver.execute_script("return document.getElementById('text').textContent")


def selected_scores(driver) -> dict:
    return driver.execute_script(
        "const out = {}; for (const s of document.querySelectorAll('.scale')) {"
        " const b = s.querySelector('.score.selected'); out[s.dataset.scale] = b ? Number(b.dataset.value) : null; } return out;")


def answers_of(db: Path, task: str) -> list[tuple[str, dict]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT i.text, a.value FROM answers a JOIN items i ON a.item_id = i.id JOIN tasks t ON i.task_id = t.id "
            "JOIN raters r ON a.rater_id = r.id WHERE t.name = ? AND r.name = ? ORDER BY a.id", (task, RATER)).fetchall()
    return [(text.strip(), json.loads(value)) for text, value in rows]


def test_rating_with_the_keyboard_is_stored_and_undo_works(browser, app):
    from selenium.webdriver.common.keys import Keys

    url, db = app
    browser.get(f"{url}/?task=rate-me")
    wait_for(browser, lambda d: d.find_element("id", "name-input").is_displayed())
    browser.find_element("id", "name-input").send_keys(RATER, Keys.ENTER)
    wait_for(browser, lambda d: progress(d) == "0 of 12")
    html = browser.page_source
    assert "alpha-model" not in html and "beta-model" not in html and "/secret/" not in html

    first = shown_text(browser)
    keys(browser, "4", "2")  # positivity 4, then sense 2
    assert selected_scores(browser) == {"positivity": 4, "sense": 2}
    keys(browser, Keys.ENTER)
    wait_for(browser, lambda d: progress(d) == "1 of 12")

    second = shown_text(browser)
    # 3 for positivity; up to it again, right arrow -> 4; down to sense, 5; submit
    keys(browser, "3", Keys.ARROW_UP, Keys.ARROW_RIGHT, Keys.ARROW_DOWN, "5")
    assert selected_scores(browser) == {"positivity": 4, "sense": 5}
    keys(browser, Keys.ENTER)
    wait_for(browser, lambda d: progress(d) == "2 of 12")

    third = shown_text(browser)
    keys(browser, "1", "1", Keys.ENTER)
    wait_for(browser, lambda d: progress(d) == "3 of 12")
    assert answers_of(db, "rate-me") == [(first, {"positivity": 4, "sense": 2}), (second, {"positivity": 4, "sense": 5}),
                                         (third, {"positivity": 1, "sense": 1})]

    keys(browser, "u")  # undo: the third item comes back with its answer selected
    wait_for(browser, lambda d: progress(d) == "2 of 12")
    assert shown_text(browser) == third and selected_scores(browser) == {"positivity": 1, "sense": 1}
    assert len(answers_of(db, "rate-me")) == 2
    keys(browser, "2", "3", Keys.ENTER)
    wait_for(browser, lambda d: progress(d) == "3 of 12")
    assert answers_of(db, "rate-me")[-1] == (third, {"positivity": 2, "sense": 3})

    # An incomplete rating is not sent, and the page says what is missing.
    status = lambda d: (d.find_element("id", "status").text, "warning" in d.find_element("id", "status").get_attribute("class"))  # noqa: E731
    fourth = shown_text(browser)
    keys(browser, Keys.ENTER)
    assert status(browser) == ("Not sent: score Positivity and Sense (1–5), then press Enter.", True)
    keys(browser, "5", Keys.ENTER)
    assert progress(browser) == "3 of 12" and len(answers_of(db, "rate-me")) == 3
    assert status(browser) == ("Not sent: score Sense (1–5), then press Enter.", True)
    keys(browser, "3")  # complete: the warning goes
    assert status(browser) == ("", False) and selected_scores(browser) == {"positivity": 5, "sense": 3}
    keys(browser, Keys.ENTER)
    wait_for(browser, lambda d: progress(d) == "4 of 12")

    # 4, down, 2: down on the last scale stays there (no wrap to positivity), so 2 scores sense
    fifth = shown_text(browser)
    keys(browser, "4", Keys.ARROW_DOWN, "2")
    assert selected_scores(browser) == {"positivity": 4, "sense": 2}
    keys(browser, Keys.ARROW_UP, Keys.ARROW_UP, "1")  # and up stops at the first scale
    assert selected_scores(browser) == {"positivity": 1, "sense": 2}
    keys(browser, Keys.ENTER)
    wait_for(browser, lambda d: progress(d) == "5 of 12")
    assert answers_of(db, "rate-me")[3:] == [(fourth, {"positivity": 5, "sense": 3}), (fifth, {"positivity": 1, "sense": 2})]

    SCREENS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENS / "rating-desktop.png"))


def test_phone_layout_fits_and_buttons_work(browser, app):
    url, db = app
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    try:
        browser.get(f"{url}/?task=rate-me")
        wait_for(browser, lambda d: d.find_element("id", "view-item").is_displayed())
        width = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1] == 390  # nothing scrolls sideways
        scores = browser.find_elements("css selector", ".score")
        assert len(scores) == 10 and all(s.is_displayed() and s.size["height"] >= 44 for s in scores)  # finger-sized
        before = progress(browser)
        # each click redraws the scales, so find the button afresh every time
        browser.find_element("css selector", '.scale[data-scale="positivity"] .score[data-value="5"]').click()
        browser.find_element("css selector", '.scale[data-scale="sense"] .score[data-value="1"]').click()
        assert selected_scores(browser) == {"positivity": 5, "sense": 1}
        SCREENS.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(SCREENS / "rating-phone.png"))
        browser.find_element("id", "submit").click()
        wait_for(browser, lambda d: progress(d) != before)
        assert answers_of(db, "rate-me")[-1][1] == {"positivity": 5, "sense": 1}
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_label_task_shows_script_tags_as_text_and_takes_number_keys(browser, app):
    url, db = app
    browser.get(f"{url}/?task=label-me")
    wait_for(browser, lambda d: progress(d) == "0 of 4")
    text = shown_text(browser)
    assert "<script>window.__pwned = 1</script>" in text and "<img src=x" in text  # shown literally
    assert browser.find_elements("css selector", "#text script, #text img") == []
    assert browser.execute_script("return window.__pwned") is None  # nothing ran
    keys(browser, "1")  # good
    wait_for(browser, lambda d: progress(d) == "1 of 4")
    second = shown_text(browser)
    keys(browser, "2")  # bad
    wait_for(browser, lambda d: progress(d) == "2 of 4")
    assert answers_of(db, "label-me") == [(text, {"label": "good"}), (second, {"label": "bad"})]
    SCREENS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENS / "label-desktop.png"))


def test_pairs_take_keys_and_stack_on_a_phone(browser, app):
    from selenium.webdriver.common.keys import Keys

    url, db = app
    browser.get(f"{url}/?task=pick-me")
    wait_for(browser, lambda d: progress(d) == "0 of 6")
    both = lambda d: (d.find_element("id", "text-a").text, d.find_element("id", "text-b").text)  # noqa: E731
    first = both(browser)
    keys(browser, "2")  # B
    wait_for(browser, lambda d: progress(d) == "1 of 6")
    second = both(browser)
    keys(browser, Keys.ARROW_LEFT)  # select A, then confirm
    assert "selected" in browser.find_element("id", "choice-a").get_attribute("class")
    keys(browser, Keys.ENTER)
    wait_for(browser, lambda d: progress(d) == "2 of 6")
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT i.text, i.text_b, a.value FROM answers a JOIN items i ON a.item_id = i.id "
                              "JOIN tasks t ON i.task_id = t.id WHERE t.name = 'pick-me' ORDER BY a.id").fetchall()
    assert [(a.strip(), b.strip(), json.loads(v)) for a, b, v in stored] == [(*first, {"choice": "b"}), (*second, {"choice": "a"})]
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    try:
        browser.get(f"{url}/?task=pick-me")
        wait_for(browser, lambda d: progress(d) == "2 of 6")
        a, b = browser.find_element("id", "choice-a").rect, browser.find_element("id", "choice-b").rect
        assert b["y"] >= a["y"] + a["height"] and a["width"] > 300  # stacked, full width
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 390
        SCREENS.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(SCREENS / "pairs-phone.png"))
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
