"""The web pages in a real browser (Debian's Chromium through its chromedriver, driven by
Selenium) against a real `stemfleet up`: Postgres, the API, the scaler and a local worker
running Demucs' tiny model. One system and one browser serve the whole module; the tests run
in order, as a user would go: sign in with the printed link, drop two songs in, watch them go
through the queue, play and mix the stems, download them, cancel one, see a failure's reason,
sign in with Supabase Auth (a fake GoTrue), then the operator's page. No sleeps: every wait is
on a DOM condition or a file.
"""

from __future__ import annotations

import io
import re
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import soundfile as sf
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

from tests.audio_fixtures import write_clip, write_corrupt
from tests.web_support import (
    DAILY_BUDGET,
    RECORDER,
    STEMS,
    Browser,
    FakeGoTrue,
    System,
    browser,
    gotrue,
    system,
)

__all__ = ["browser", "gotrue", "system"]  # the module's shared fixtures

pytestmark = pytest.mark.slow


def test_the_printed_link_signs_the_local_user_in(system: System, browser: Browser) -> None:
    secret = re.search(r"webhooks\s+signed with the secret in (\S+)", system.banner)
    assert secret, system.banner
    assert Path(secret.group(1)).read_text().startswith("whsec_")

    browser.driver.get(system.user_link)
    browser.wait(lambda d: d.find_element(By.ID, "app").is_displayed(), 30)
    assert browser.driver.current_url == system.url + "/"  # the token left the address bar
    assert "local user" in browser.driver.find_element(By.ID, "who").text
    assert not browser.driver.find_element(By.ID, "signin").is_displayed()


def test_two_songs_go_queued_running_done_without_reloading(
    system: System, browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("songs")
    small = write_clip(folder / "small song.wav", 4.0)  # 0.7 MB: in the job's own request
    big = write_clip(folder / "big song.wav", 45.0)  # 7.9 MB: through the presigned PUT
    browser.js(RECORDER)

    browser.drop_files(small, big)
    small_id, big_id = browser.named("small_song.wav"), browser.named("big_song.wav")

    browser.wait(
        lambda d: browser.status(small_id) == "succeeded" and browser.status(big_id) == "succeeded",
        message="the jobs did not finish",
    )
    seen: dict[str, list[str]] = browser.js("return window.__seen")
    for job in (small_id, big_id):
        states = [entry.split(":")[0] for entry in seen[job]]
        assert states[0] == "queued", seen[job]
        assert "running" in states and states[-1] == "succeeded", seen[job]
        assert states.index("queued") < states.index("running") < states.index("succeeded")
    # a finished row is drawn once: a repeated answer must not replace the buttons a user is
    # about to click (the final event came twice, and a click landed on a detached button)
    assert browser.js("return window.__drawn") == {small_id: 1, big_id: 1}
    progress = [float(e.split(":")[1]) for e in seen[big_id] if e.startswith("running:")]
    assert progress == sorted(progress), progress  # never backwards
    assert any(0 < p < 1 for p in progress), f"no progress between 0 and 1: {seen[big_id]}"
    # one page load all along, and the big file went straight to storage
    assert browser.js("return window.__loaded") == browser.js("return performance.timeOrigin")
    uploaded: dict[str, list[float]] = browser.js("return window.__uploaded")
    for name in ("small song.wav", "big song.wav"):  # each had its upload progress bar move
        assert max(uploaded[name]) > 0.5, uploaded
    requests = browser.js("return performance.getEntriesByType('resource').map(e => e.name)")
    assert any("/v1/uploads" in r for r in requests), requests
    assert any("/v1/files/inputs/" in r for r in requests), requests
    created = browser.js(
        "return [...document.querySelectorAll('#jobs li.job')].map(r => r.dataset.id)"
    )
    assert set(created[:2]) == {big_id, small_id}


def _stems_state(browser: Browser) -> dict[str, dict[str, Any]]:
    return browser.js(  # type: ignore[no-any-return]
        "const out = {}; document.querySelectorAll('#player audio')"
        ".forEach(a => out[a.dataset.stem] = {paused: a.paused, muted: a.muted,"
        " volume: a.volume, time: a.currentTime, ready: a.readyState}); return out;"
    )


def _in_step(browser: Browser) -> bool:
    """All stems playing, within 100 ms of each other (the player keeps them there: a busy
    machine may let one lag a moment before it is put back)."""
    state = _stems_state(browser)
    times = [s["time"] for s in state.values()]
    return not any(s["paused"] for s in state.values()) and max(times) - min(times) < 0.1


def _stem_button(browser: Browser, stem: str, action: str) -> WebElement:
    return browser.driver.find_element(
        By.CSS_SELECTOR, f'#player li.stem[data-stem="{stem}"] [data-action="{action}"]'
    )


def test_the_player_plays_mutes_solos_and_seeks_the_stems_in_step(browser: Browser) -> None:
    big = browser.row(browser.named("big_song.wav"))
    big.find_element(By.CSS_SELECTOR, '[data-action="play"]').click()
    browser.wait(lambda d: len(_stems_state(browser)) == 4, 30)
    assert set(_stems_state(browser)) == STEMS
    browser.wait(lambda d: all(s["ready"] >= 2 for s in _stems_state(browser).values()), 30)
    browser.wait(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, '#player canvas[data-drawn="true"]')) == 4,
        30,
        "the waveforms were not drawn",
    )

    # the keyboard: the play button has the focus once the player opens
    focused = browser.driver.switch_to.active_element
    assert focused.get_attribute("data-action") == "play-all"
    focused.send_keys(Keys.ENTER)
    browser.wait(lambda d: all(s["time"] > 0.5 for s in _stems_state(browser).values()), 30)
    browser.wait(lambda d: _in_step(browser), 10, "the stems do not play in step")

    _stem_button(browser, "vocals", "mute").click()
    state = _stems_state(browser)
    assert state["vocals"]["muted"] and not state["drums"]["muted"], state

    _stem_button(browser, "drums", "solo").click()
    state = _stems_state(browser)
    assert {name for name, s in state.items() if not s["muted"]} == {"drums"}, state
    assert _stem_button(browser, "drums", "solo").get_attribute("aria-pressed") == "true"

    volume = _stem_button(browser, "bass", "volume")
    for _ in range(10):
        volume.send_keys(Keys.ARROW_LEFT)
    assert _stems_state(browser)["bass"]["volume"] == pytest.approx(0.9, abs=0.001)

    browser.js(
        "const seek = document.querySelector('#player .seek'); seek.value = '10';"
        " seek.dispatchEvent(new Event('input'));"
    )
    state = _stems_state(browser)
    assert all(abs(s["time"] - 10) < 0.3 for s in state.values()), state
    browser.wait(lambda d: all(s["time"] > 10.3 for s in _stems_state(browser).values()), 30)
    browser.wait(lambda d: _in_step(browser), 10, "the stems do not play in step after a seek")
    browser.shot("web-user.png")


def test_download_all_stems_as_one_archive(browser: Browser) -> None:
    link = browser.driver.find_element(By.CSS_SELECTOR, "#player a.button[download]")
    link.click()

    def archive(_: Any) -> Path | None:
        done = [p for p in browser.downloads.iterdir() if p.suffix == ".zip"]
        return done[0] if done else None

    path: Path = browser.wait(archive, message="the archive did not download")
    assert path.name == "big_song-stems.zip"
    with zipfile.ZipFile(path) as zipped:
        assert {Path(n).stem for n in zipped.namelist()} == STEMS
        for name in zipped.namelist():
            audio, rate = sf.read(io.BytesIO(zipped.read(name)))
            assert abs(len(audio) / rate - 45.0) < 0.1, name
    browser.driver.find_element(By.CSS_SELECTOR, '#player [aria-label="Close the player"]').click()


def test_cancel_a_running_job(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> None:
    song = write_clip(tmp_path_factory.mktemp("long") / "long song.wav", 60.0)
    [job] = browser.drop_files(song)
    browser.wait(lambda d: browser.status(job) == "running", message="it never ran")
    cancel = browser.row(job).find_element(By.CSS_SELECTOR, '[data-action="cancel"]')
    cancel.click()
    browser.wait(lambda d: browser.status(job) == "cancelled", 30)
    assert browser.row(job).find_elements(By.CSS_SELECTOR, '[data-action="cancel"]') == []


def test_a_failure_shows_its_reason_and_what_to_do(
    browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    broken = write_corrupt(tmp_path_factory.mktemp("broken") / "broken.flac")
    jobs = browser.drop_files(broken)
    if jobs:  # the API took it: the worker fails it, with the reason and advice in the row
        browser.wait(lambda d: browser.status(jobs[0]) == "failed", message="it did not fail")
        reason = browser.row(jobs[0]).find_element(By.CSS_SELECTOR, ".reason").text
        advice = browser.row(jobs[0]).find_element(By.CSS_SELECTOR, ".advice").text
        assert "decode" in reason or "read" in reason, reason
        assert "another file" in advice, advice
    else:  # the API refused it at once: the upload row says why
        said = browser.driver.find_element(By.CSS_SELECTOR, "#uploads li.failed .error").text
        assert said.startswith("not submitted: ") and len(said) > 30, said
    assert "/" + "tmp" not in browser.driver.find_element(By.ID, "jobs").text  # no server paths


def test_the_page_says_when_the_api_is_unreachable_or_the_token_expired(
    system: System, browser: Browser
) -> None:
    driver = browser.driver
    # the API's requests fail as they do when it is down (connection refused)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/v1/*"]})
    try:
        browser.js("window.dispatchEvent(new Event('online'))")  # the page checks the API
        notice = driver.find_element(By.ID, "notice")
        browser.wait(lambda d: notice.is_displayed(), 30, "no notice")
        assert "not answering" in notice.text
    finally:
        driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
    browser.js("localStorage.setItem('stemfleet.session', '{\"access_token\": \"expired\"}')")
    driver.get(system.url + "/")
    browser.wait(lambda d: d.find_element(By.ID, "signin").is_displayed(), 30)
    assert "expired" in driver.find_element(By.ID, "notice").text
    driver.get(system.user_link)  # signed in again for what follows
    browser.wait(lambda d: d.find_element(By.ID, "app").is_displayed(), 30)


def test_supabase_sign_in_with_a_password_or_a_magic_link(
    system: System, browser: Browser, gotrue: FakeGoTrue
) -> None:
    driver = browser.driver
    email = "ada@example.com"
    driver.find_element(By.ID, "sign-out").click()
    browser.wait(lambda d: d.find_element(By.ID, "email-form").is_displayed(), 30)

    driver.find_element(By.ID, "email").send_keys(email)
    driver.find_element(By.ID, "password").send_keys("wrong", Keys.ENTER)
    said = browser.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#email-form .said"), 30)[0]
    assert said.text == "Not signed in: Invalid login credentials"

    driver.find_element(By.ID, "password").clear()
    driver.find_element(By.ID, "password").send_keys("correct horse battery staple", Keys.ENTER)
    browser.wait(lambda d: d.find_element(By.ID, "app").is_displayed(), 30)
    assert driver.find_element(By.ID, "who").text == email
    browser.wait(lambda d: d.find_element(By.ID, "jobs-empty").is_displayed(), 30)  # not theirs

    driver.find_element(By.ID, "sign-out").click()
    browser.wait(lambda d: d.find_element(By.ID, "email-form").is_displayed(), 30)
    driver.find_element(By.ID, "email").send_keys(email)
    driver.find_element(By.ID, "magic-link").click()
    browser.wait(lambda d: "Check your email" in d.find_element(By.ID, "email-form").text, 30)
    [link] = gotrue.magic_links
    assert link.startswith(system.url + "/#access_token=")
    driver.get(link)  # the link in the email
    browser.wait(lambda d: d.find_element(By.ID, "who").text == email, 30)
    assert driver.current_url == system.url + "/"
    assert gotrue.invalid == []

    driver.find_element(By.ID, "sign-out").click()
    browser.wait(lambda d: d.find_element(By.ID, "email-form").is_displayed(), 30)
    driver.get(system.user_link)  # the local user again, for what follows
    browser.wait(lambda d: d.find_element(By.ID, "who").text == "local user", 30)


def test_the_page_reads_well_at_a_phone_width(system: System, browser: Browser) -> None:
    driver = browser.driver
    driver.set_window_size(390, 844)
    try:
        browser.wait(lambda d: len(browser.job_rows()) >= 3, 30)
        page = "document.documentElement"
        assert browser.js(f"return {page}.scrollWidth <= {page}.clientWidth"), "it scrolls sideways"
        browser.shot("web-user-phone.png")
    finally:
        driver.set_window_size(1100, 1400)


def _record_yesterday(database_url: str) -> tuple[str, float]:
    """A machine that ran 4 h yesterday at $2.50/h: $10 against the $8 daily budget."""
    day = (datetime.now(UTC) - timedelta(days=1)).replace(hour=8, minute=0, second=0)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "insert into scaler.machine_runs (provider, machine_id, size, hourly_usd, started_at,"
            " stopped_at) values ('fly', 'fly-yesterday', 'l40s', 2.5, %s, %s)",
            (day, day + timedelta(hours=4)),
        )
    return day.date().isoformat(), 10.0


def test_the_operator_page_shows_spend_against_the_budget(system: System, browser: Browser) -> None:
    day, cost = _record_yesterday(system.database_url)
    driver = browser.driver
    driver.get(system.operator_link)
    browser.wait(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"), 30)
    assert driver.current_url == system.url + "/admin"

    bar = driver.find_element(By.CSS_SELECTOR, f'#spend-chart rect.bar[data-day="{day}"]')
    assert float(str(bar.get_attribute("data-value"))) == pytest.approx(cost)
    assert "over" in str(bar.get_attribute("class"))  # over the daily budget: drawn red
    limit = driver.find_element(By.CSS_SELECTOR, "#spend-chart line.limit")
    assert float(str(limit.get_attribute("data-limit"))) == DAILY_BUDGET
    gauges = driver.find_element(By.ID, "gauges").text
    assert "of $8.00)" in gauges and "of $1000)" in gauges and "of $10)" in gauges, gauges
    fleet = driver.find_element(By.ID, "fleet").text
    assert "local" in fleet, fleet
    costs = driver.find_elements(By.CSS_SELECTOR, "#costs tbody tr")
    assert len(costs) >= 3, driver.find_element(By.ID, "costs").text  # the jobs that ran
    decisions = driver.find_element(By.ID, "decisions").text
    assert "create" in decisions or "start" in decisions, decisions  # it started the worker
    browser.shot("web-operator.png")


def test_docs_render_offline(system: System, browser: Browser) -> None:
    browser.driver.get(system.url + "/docs")
    browser.wait(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title"),
        30,
        "the OpenAPI UI did not render",
    )
    assert "stemfleet" in browser.driver.find_element(By.CSS_SELECTOR, ".info .title").text
