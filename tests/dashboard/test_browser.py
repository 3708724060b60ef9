"""The dashboard in a real browser against a running `stanfleet up` (3 simulated
devices running the real firmware, TLS, logins)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from stanfleet.fleet.firmware_code import FIRMWARE_DIR

from .conftest import DEVICES, screenshot

pytest.importorskip("selenium", reason="browser tests skipped: selenium is not installed")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow
WAIT = 30  # seconds for a page condition; OTA takes longer (OTA_WAIT)
OTA_WAIT = 150
RELEASE = "1.1.0"
BROKEN = "1.2.0"  # its app crashes at import: every device rolls back


def wait(driver, timeout=WAIT):
    # Live pages redraw their rows: an element found a moment ago may be gone.
    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,))


def text(driver, css: str) -> str | None:
    """An element's text, read in one step (no stale reference in between)."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : null", css)


def login(driver, up, role: str, password: str | None = None) -> None:
    driver.get(up.url + "login")
    driver.find_element(By.ID, "user").send_keys(role)
    driver.find_element(By.ID, "password").send_keys(password or up.password(role))
    driver.find_element(By.ID, "login").click()


def logged_in(driver, up, role: str) -> None:
    login(driver, up, role)
    wait(driver).until(EC.presence_of_element_located((By.ID, "who")))


def device_ids() -> list[str]:
    return [f"D{i:07d}" for i in range(1, DEVICES + 1)]


def test_login_refuses_a_wrong_password(browser, up):
    login(browser, up, "operator", "not-the-password")
    wait(browser).until(EC.visibility_of_element_located((By.ID, "error")))
    assert browser.current_url.startswith(up.url + "login")


def test_fleet_page_lists_every_device_and_updates_live(browser, up):
    logged_in(browser, up, "operator")
    for d in device_ids():  # each device appears once it has reported (live, no reload)
        wait(browser, 60).until(EC.presence_of_element_located((By.ID, f"row-{d}")))
    row = f"#row-{device_ids()[0]}"
    wait(browser, 60).until(lambda b: b.find_element(By.CSS_SELECTOR, f"{row} .connection").text
                            == "online")
    first = browser.execute_script(
        "return document.querySelector(arguments[0]).dataset.ts", f"{row} .age")
    # A new reading arrives every 3 s and reaches the page over server-sent events.
    marker = browser.execute_script("window.__same_page = 1; return window.__same_page")
    wait(browser).until(lambda b: b.find_element(By.CSS_SELECTOR, f"{row} .age")
                        .get_attribute("data-ts") != first)
    assert browser.execute_script("return window.__same_page") == marker  # not reloaded
    assert text(browser, f"{row} .version") in ("1.0.0", RELEASE)
    # Filtering narrows the table; the fleet chart has points.
    browser.find_element(By.ID, "filter").send_keys(device_ids()[1])
    wait(browser).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#fleet tbody tr")) == 1)
    browser.find_element(By.ID, "filter").clear()
    browser.find_element(By.ID, "filter").send_keys(" ")  # oninput fires on typing, not clear()
    wait(browser).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#fleet tbody tr")) == DEVICES)
    browser.find_element(By.CSS_SELECTOR, 'th[data-key="device"]').click()  # descending
    wait(browser).until(lambda b: b.find_element(By.CSS_SELECTOR, "#fleet tbody tr").get_attribute("id")
                        == f"row-{device_ids()[-1]}")
    browser.find_element(By.CSS_SELECTOR, 'button[data-range="hour"]').click()
    wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#fleet-chart.rendered canvas")))
    screenshot(browser, "fleet")


def test_device_chart_renders_with_points(browser, up):
    logged_in(browser, up, "operator")
    device = device_ids()[0]
    browser.get(f"{up.url}device/{device}")
    chart = wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#chart.rendered")))
    assert int(chart.get_attribute("data-points")) > 0
    assert chart.find_element(By.TAG_NAME, "canvas").size["width"] > 300
    # Drag across the chart: the zoomed range is fetched again, in finer buckets.
    over = browser.find_element(By.CSS_SELECTOR, "#chart .u-over")
    width = over.size["width"]
    ActionChains(browser).move_to_element_with_offset(over, -width // 4, 0).click_and_hold() \
        .move_by_offset(width // 2, 0).release().perform()
    wait(browser).until(lambda b: "zoomed" in text(b, "#chart-label"))
    browser.find_element(By.CSS_SELECTOR, 'button[data-range="week"]').click()
    wait(browser).until(lambda b: "10 min buckets" in text(b, "#chart-label"))
    wait(browser).until(lambda b: "stanfleet: connected" in text(b, "#log"))
    screenshot(browser, "device")


def test_config_change_on_the_page_reaches_the_device(browser, up):
    logged_in(browser, up, "operator")
    device = device_ids()[1]
    browser.get(f"{up.url}device/{device}")
    form = wait(browser).until(EC.presence_of_element_located((By.ID, "cfg-form")))
    Select(form.find_element(By.ID, "cfg-key")).select_by_value("sending_frequency")
    # The firmware's rules refuse 0 before anything is sent.
    form.find_element(By.ID, "cfg-value").send_keys("0")
    form.find_element(By.ID, "cfg-send").click()
    wait(browser).until(lambda b: "between 1 and 86400" in b.find_element(By.ID, "cfg-msg").text)
    value = form.find_element(By.ID, "cfg-value")
    value.clear()
    value.send_keys("2")
    form.find_element(By.ID, "cfg-send").click()
    wait(browser).until(lambda b: "pending until applied" in b.find_element(By.ID, "cfg-msg").text)
    # Desired 2, applied 2 once the device reports it: no longer pending.
    wait(browser, 60).until(lambda b: (lambda t: "2 → 2" in t and "pending" not in t)(
        b.find_element(By.ID, "config").text))
    assert "sending_frequency" in text(browser, "#config-changes")
    screenshot(browser, "device-config-applied")


def build(up, version: str, firmware=FIRMWARE_DIR) -> None:
    """`stanfleet release build`, signed with the key up made (devices check it)."""
    built = subprocess.run(
        [sys.executable, "-m", "stanfleet.cli", "release", "build", version, "--firmware",
         str(firmware), "--releases", str(up.data / "releases"), "--keys", str(up.data / "security")],
        capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr


def publish_on_page(browser, up, version: str) -> str:
    """Publish `version` to every device from the releases page; its progress selector."""
    logged_in(browser, up, "operator")
    browser.get(up.url + "releases")
    row = wait(browser).until(EC.presence_of_element_located((By.ID, f"release-{version}")))
    canary = row.find_element(By.CSS_SELECTOR, "input.canary")
    canary.clear()
    canary.send_keys("100")
    row.find_element(By.CSS_SELECTOR, "button.publish").click()
    wait(browser).until(lambda b: f"{version} published" in b.find_element(By.ID, "release-msg").text)
    return f"#progress-{version.replace('.', chr(92) + '.')}"


def test_release_published_on_the_page_reaches_every_device(browser, up):
    build(up, RELEASE)
    progress = publish_on_page(browser, up, RELEASE)
    wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, progress)))
    screenshot(browser, "releases-started")
    wait(browser, OTA_WAIT).until(lambda b: b.find_element(By.CSS_SELECTOR, f"{progress} .count").text
                                  == f"{DEVICES}/{DEVICES} installed")
    states = browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText)",
        f"{progress} td.state")
    assert states == ["installed"] * DEVICES
    assert browser.execute_script("return document.querySelector(arguments[0]).style.width",
                                  f"{progress} .bar > div") == "100%"
    screenshot(browser, "releases-done")
    browser.get(up.url)
    wait(browser).until(lambda b: all(
        b.find_element(By.CSS_SELECTOR, f"#row-{d} .version").text == RELEASE for d in device_ids()))


def test_a_rolled_back_release_stands_out(browser, up, tmp_path):
    broken = tmp_path / "firmware"
    shutil.copytree(FIRMWARE_DIR, broken)
    (broken / "app" / "device.py").write_text('raise RuntimeError("this build is broken")\n')
    build(up, BROKEN, broken)
    progress = publish_on_page(browser, up, BROKEN)
    # Each device boots it on trial three times, then goes back to its slot.
    wait(browser, OTA_WAIT).until(lambda b: len(b.find_elements(
        By.CSS_SELECTOR, f"{progress} tr.bad")) == DEVICES)
    states = browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText)",
        f"{progress} td.state")
    assert set(states) == {"rolled back"}
    assert "failed or rolled back" in text(browser, progress)
    screenshot(browser, "releases-rolled-back")
    browser.get(up.url)
    wait(browser).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#alerts .alert-ota"))
                        == DEVICES)
    assert f"OTA {BROKEN} rolled back" in text(browser, "#alerts")
    screenshot(browser, "fleet-alerts")


def test_read_only_role_sees_no_controls_and_a_forged_change_is_refused(browser, up):
    logged_in(browser, up, "listener")
    wait(browser).until(EC.presence_of_element_located((By.ID, f"row-{device_ids()[0]}")))
    assert "read only" in text(browser, "#who")
    assert not browser.find_elements(By.ID, "cfg-form")
    assert not browser.find_elements(By.ID, "range-form")
    browser.get(up.url + "releases")
    wait(browser).until(lambda b: "may not publish" in b.find_element(By.ID, "release-msg").text)
    assert not browser.find_elements(By.CSS_SELECTOR, "button.publish")
    screenshot(browser, "read-only")
    # The same requests the operator's page sends, forged from the listener's page:
    # with its own session and CSRF token the server still refuses them.
    forged = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const me = await (await fetch('/api/me')).json();
        const post = (url, body, csrf) => fetch(url, {method: 'POST', body: JSON.stringify(body),
            headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf}}).then(r => r.status);
        done([await post('/api/config', {target: '*', settings: {sending_frequency: 1}}, me.csrf),
              await post('/api/releases/publish', {version: '%s', canary: 100}, me.csrf),
              await post('/api/alert-range', {low: 0, high: 1}, me.csrf),
              await post('/api/config', {target: '*', settings: {sending_frequency: 1}}, 'wrong')]);
    """ % RELEASE)
    assert forged == [403, 403, 403, 403]
    # And nothing changed on the devices: none wants sending_frequency 1.
    rows = json.loads(browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/api/fleet').then(r => r.text()).then(done);"))["rows"]
    assert all(r["desired"].get("sending_frequency") != 1 for r in rows)


def test_without_a_session_nothing_is_served(browser, up):
    browser.get(up.url)
    wait(browser).until(EC.url_contains("/login"))
    browser.get(up.url + "api/fleet")
    assert "log in first" in browser.page_source
