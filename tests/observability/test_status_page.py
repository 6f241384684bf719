"""The status page in a real headless Chromium (Debian's chromium and chromium-driver; the
Makefile's test target installs them): Llm rows, a hibernating Llm going waking -> active
live while a request wakes it, recent errors without prompt text, and the key prompt with
auth on. A screenshot is saved as an artifact (build/artifacts/status-page.png)."""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path

import pytest

from tests.e2e.test_security import KeyedPublisher, make_key
from tests.support.hub import wait_until
from tests.support.publisher import TestPublisher

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "artifacts"
CANARY = "canary-0b7d41f2"

if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):  # pragma: no cover
    pytest.skip(f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {DRIVER}); "
                "`make test` installs them with apt-get", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# The row's status, recorded by the page itself on every change: a state shorter than a
# WebDriver poll is still seen, and a reload would wipe the record.
RECORDER = """
window.__seen = [];
const record = () => {
  const cell = document.querySelector('tr[data-llm="sleepy"] .status');
  const text = cell ? cell.textContent : null;
  if (text && window.__seen[window.__seen.length - 1] !== text) window.__seen.push(text);
};
new MutationObserver(record).observe(document.body,
  {subtree: true, childList: true, characterData: true});
record();
"""


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1100,760"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def status_of(driver, name: str) -> str | None:
    cells = driver.find_elements(By.CSS_SELECTOR, f'tr[data-llm="{name}"] .status')
    return cells[0].text if cells else None


def until(driver, predicate, timeout: float = 10):
    # The page re-renders rows on each change: an element found a moment ago may be gone.
    return WebDriverWait(driver, timeout, poll_frequency=0.05,
                         ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: predicate(d))


@pytest.mark.timeout(90)
def test_the_page_shows_a_wake_live(hub, publisher, browser):
    publisher.register("alpha")
    publisher.register({"name": "sleepy", "type": "openai", "model": "m",
                        "initialStatus": "hibernating"})
    stream = publisher.open()
    browser.get(hub.url + "/status")
    until(browser, lambda d: status_of(d, "alpha") == "active"
          and status_of(d, "sleepy") == "hibernating")
    assert browser.find_element(By.ID, "conn").text == "live"
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-llm="sleepy"]').text
    assert "virtual" in row and publisher.session_id in row
    browser.execute_script(RECORDER)

    with cf.ThreadPoolExecutor(2) as pool:
        # A failing request first: it shows among the recent errors, by code only.
        pending = pool.submit(hub.infer, "alpha", CANARY)
        task = stream.next_task("infer")
        publisher.result(task["taskId"], {"error": {"message": f"no {CANARY}"}})
        assert pending.result().status_code == 502
        until(browser, lambda d: "publisher_error" in d.find_element(By.ID, "errors").text)

        pending = pool.submit(hub.infer, "sleepy", CANARY)
        wake = stream.next_task("wake")
        until(browser, lambda d: status_of(d, "sleepy") == "waking")
        queued = browser.find_element(By.CSS_SELECTOR, 'tr[data-llm="sleepy"]').text
        assert "waking since" in queued
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "status-page.png"))
        publisher.result(wake["taskId"], {"status": 200, "body": None})
        infer = stream.next_task("infer")
        publisher.result(infer["taskId"], {"status": 200, "body": {"ok": True}})
        assert pending.result().status_code == 200

    until(browser, lambda d: status_of(d, "sleepy") == "active")
    seen = browser.execute_script("return window.__seen")  # undefined after a reload
    assert seen == ["hibernating", "waking", "active"]
    until(browser, lambda d: "succeeded" in d.find_element(
        By.CSS_SELECTOR, 'tr[data-llm="sleepy"]').text)
    totals = browser.find_element(By.ID, "totals").text
    assert "requests" in totals and "publishers" in totals
    assert CANARY not in browser.page_source

    # A phone's width: the table still fits, the less useful columns step aside.
    browser.set_window_size(390, 800)
    until(browser, lambda d: not d.find_element(By.CSS_SELECTOR, "th.wide").is_displayed())
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth + 1")
    assert browser.save_screenshot(str(ARTIFACTS / "status-page-phone.png"))


@pytest.mark.timeout(90)
def test_with_auth_on_the_page_asks_for_a_key_and_keeps_it_in_the_tab(hub_factory, browser):
    hub = hub_factory(auth="on")
    admin = make_key(hub, "admin", "root")
    reader = make_key(hub, "client", "viewer")
    KeyedPublisher(hub.url, admin).register("alpha")
    browser.get(hub.url + "/status")
    until(browser, lambda d: d.find_element(By.ID, "keyform").is_displayed())
    assert status_of(browser, "alpha") is None
    field = browser.find_element(By.ID, "key")
    field.send_keys("not-a-key")
    field.submit()
    until(browser, lambda d: "refused" in d.find_element(By.ID, "keyerror").text)
    field = browser.find_element(By.ID, "key")
    field.send_keys(reader)
    field.submit()
    until(browser, lambda d: status_of(d, "alpha") is not None)
    assert browser.execute_script("return sessionStorage.getItem('tether-status-key')") == \
        reader
    assert browser.execute_script("return localStorage.length") == 0
    assert not browser.find_element(By.ID, "keyform").is_displayed()
    wait_until(lambda: hub.get("/status/state").status_code == 401)  # the reads need the key


@pytest.mark.timeout(90)
def test_an_alias_shows_its_targets_and_which_one_serves_now(hub_factory, tmp_path, browser):
    """docs/protocol.md, Aliases: the page lists each alias with its targets and the one
    that takes its requests now, live: the sleeping first target once it is awake."""
    conf = tmp_path / "alias.toml"
    conf.write_text('[[aliases]]\nname = "assistant"\ntargets = ["sleepy", "alpha"]\n')
    hub = hub_factory(config=str(conf))
    publisher = TestPublisher(hub.url)
    publisher.register("alpha")
    publisher.register({"name": "sleepy", "type": "openai", "model": "m",
                        "initialStatus": "hibernating"})
    publisher.open()
    browser.get(hub.url + "/status")

    def serving(d) -> str | None:
        cells = d.find_elements(By.CSS_SELECTOR, 'tr[data-alias="assistant"] .serving')
        return cells[0].get_attribute("data-serving") if cells else None

    until(browser, lambda d: serving(d) == "alpha")
    until(browser, lambda d: "sleepy → alpha" in d.find_element(
        By.CSS_SELECTOR, 'tr[data-alias="assistant"]').text)
    assert publisher.status(sleepy="active").status_code == 200
    until(browser, lambda d: serving(d) == "sleepy")
