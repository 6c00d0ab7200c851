"""The browser tests' plumbing: a real `stemfleet up` (module-scoped), Debian's Chromium driven
by Selenium through Debian's chromedriver (nothing downloaded), a recorder of what the page
showed over time, and a fake Supabase Auth (GoTrue) server on loopback."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from app.pgserver import free_port
from tests.test_cli_embedded import _data_folder, _environment, _wait_for_line, start_up

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 120  # seconds: a job on a shared, busy CI machine
DAILY_BUDGET = 8.0
STEMS = {"drums", "bass", "other", "vocals"}


@dataclass
class System:
    process: subprocess.Popen[str]
    url: str
    user_link: str
    operator_link: str
    banner: str
    database_url: str
    data_dir: Path


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, gotrue: FakeGoTrue) -> Iterator[System]:
    """`stemfleet up` as a user starts it, with a worker from the start; files over 1 MiB go
    through the presigned PUT; a small daily budget, so a recorded day can go over it."""
    folder = _data_folder()
    tmp = tmp_path_factory.mktemp("web-up")
    env = _environment(
        folder,
        tmp,
        STEMFLEET_MIN_MACHINES="1",
        STEMFLEET_WEB_PRESIGN_ABOVE_MB="1",
        STEMFLEET_DAILY_BUDGET_USD=str(DAILY_BUDGET),
        # Supabase Auth too (the fake): email sign-in beside the local link
        STEMFLEET_SUPABASE_URL=gotrue.url,
        STEMFLEET_SUPABASE_ANON_KEY=ANON_KEY,
        STEMFLEET_JWT_SECRET=JWT_SECRET,
    )
    port = free_port()
    process, lines = start_up(env, tmp, "--port", str(port), "--scaler-interval", "0.5")
    try:
        banner = "".join(_wait_for_line(lines, "Press Ctrl-C", 120))
        user = re.search(r"open\s+(http://\S+/#token=\S+)", banner)
        operator = re.search(r"operator\s+(http://\S+/admin#token=\S+)", banner)
        database = re.search(r"database\s+(\S+)", banner)
        assert user and operator and database, banner
        yield System(
            process,
            f"http://127.0.0.1:{port}",
            user.group(1),
            operator.group(1),
            banner,
            database.group(1),
            folder,
        )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=120)
        shutil.rmtree(folder.parent, ignore_errors=True)


@dataclass
class Browser:
    driver: WebDriver
    downloads: Path
    screenshots: Path

    def wait(self, condition: Any, timeout: float = WAIT, message: str = "") -> Any:
        # a reload between finding an element and reading it makes it stale: look again
        ignored = (NoSuchElementException, StaleElementReferenceException)
        waiting = WebDriverWait(self.driver, timeout, 0.1, ignored_exceptions=ignored)
        return waiting.until(condition, message)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def job_rows(self) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, "#jobs li.job")

    def row(self, job_id: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, f'#jobs li.job[data-id="{job_id}"]')

    def status(self, job_id: str) -> str:
        return str(self.row(job_id).get_attribute("data-status"))

    def named(self, name: str) -> str:
        """The id of the job whose file is `name`."""
        for row in self.job_rows():
            if row.find_element(By.CSS_SELECTOR, ".name").text == name:
                return str(row.get_attribute("data-id"))
        raise AssertionError(f"no job for {name}")

    def drop_files(self, *paths: Path) -> list[str]:
        """Pick files as a user does; returns the new jobs' ids, newest first."""
        before = {r.get_attribute("data-id") for r in self.job_rows()}
        picker = self.driver.find_element(By.ID, "files")
        picker.send_keys("\n".join(str(p) for p in paths))
        self.wait(
            lambda d: (
                len(self.job_rows()) >= len(before) + len(paths)
                or d.find_elements(By.CSS_SELECTOR, "#uploads li.failed")
            ),
            message="the files did not become jobs",
        )
        return [
            str(r.get_attribute("data-id"))
            for r in self.job_rows()
            if r.get_attribute("data-id") not in before
        ]

    def shot(self, name: str) -> Path:
        path = self.screenshots / name
        self.driver.save_screenshot(str(path))
        return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    downloads = tmp_path_factory.mktemp("downloads")
    screenshots = Path(
        os.environ.get("STEMFLEET_TEST_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots")
    )
    screenshots.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="stemfleet-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required",
        "--mute-audio",
        "--window-size=1100,1400",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    # the driver's path is given: Selenium Manager never looks for (or downloads) one
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield Browser(driver, downloads, screenshots)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# The page's state over time, recorded in the page by a MutationObserver (the test's own
# instrument): every status and progress each job row showed, in order.
RECORDER = """
window.__seen = {};
window.__loaded = performance.timeOrigin;
const note = (row) => {
  const bar = row.querySelector("progress.job-progress");
  const entry = row.dataset.status + (bar ? ":" + bar.getAttribute("value") : "");
  const seen = (window.__seen[row.dataset.id] ||= []);
  if (seen[seen.length - 1] !== entry) seen.push(entry);
};
window.__drawn = {};  // job id -> times its row was drawn while finished
new MutationObserver((records) => {
  for (const r of records) {
    const row = r.target;
    if (r.type === "childList" && row.matches("li.job") && row.dataset.status === "succeeded") {
      window.__drawn[row.dataset.id] = (window.__drawn[row.dataset.id] || 0) + 1;
    }
  }
  document.querySelectorAll("#jobs li.job").forEach(note);
}).observe(document.getElementById("jobs"), {subtree: true, childList: true, attributes: true});
window.__uploaded = {};
new MutationObserver(() => document.querySelectorAll("#uploads li").forEach((row) => {
  const value = row.querySelector("progress").getAttribute("value");
  (window.__uploaded[row.dataset.name] ||= []).push(Number(value));
})).observe(document.getElementById("uploads"), {subtree: true, childList: true, attributes: true});
"""


# --- a fake Supabase Auth (GoTrue) ------------------------------------------------------------

ANON_KEY = "anon-key-of-the-test-project"
JWT_SECRET = "web-test-project-jwt-secret-with-32-characters-or-more"
BAD_LOGIN = "Invalid login credentials"


class FakeGoTrue:
    """The three GoTrue endpoints the page calls (POST /auth/v1/token?grant_type=password |
    refresh_token, POST /auth/v1/otp), on loopback, with the CORS preflight a browser sends.
    Every request is checked as GoTrue documents it (the anon key in `apikey`, a JSON body
    with exactly the documented fields); anything else is recorded in `invalid`, which a test
    asserts empty. Tokens are HS256 JWTs the API accepts (STEMFLEET_JWT_SECRET)."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users  # email -> password
        self.invalid: list[str] = []
        self.magic_links: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> None:
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def session(self, email: str) -> dict[str, Any]:
        now = int(time.time())
        user_id = str(uuid.uuid5(uuid.NAMESPACE_URL, email))
        claims = {
            "sub": user_id,
            "aud": "authenticated",
            "role": "authenticated",
            "email": email,
            "iat": now,
            "exp": now + 3600,
        }
        return {
            "access_token": jwt.encode(claims, JWT_SECRET, algorithm="HS256"),
            "token_type": "bearer",
            "expires_in": 3600,
            "expires_at": now + 3600,
            "refresh_token": f"refresh-{user_id}",
            "user": {"id": user_id, "email": email, "aud": "authenticated"},
        }

    def answer(self, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        fields = set(body) if isinstance(body, dict) else None
        if path == "/auth/v1/token" and query.get("grant_type") == ["password"]:
            if fields != {"email", "password"}:
                return 422, {"msg": f"bad fields {fields}"}
            if self.users.get(body["email"]) != body["password"]:
                return 400, {
                    "error": "invalid_grant",
                    "error_description": "Invalid login credentials",
                }
            return 200, self.session(body["email"])
        if path == "/auth/v1/token" and query.get("grant_type") == ["refresh_token"]:
            if fields != {"refresh_token"}:
                return 422, {"msg": f"bad fields {fields}"}
            return 400, {"error": "invalid_grant", "error_description": "Refresh token not found"}
        if path == "/auth/v1/otp" and set(query) <= {"redirect_to"}:
            if fields is None or not fields <= {"email", "create_user", "data"}:
                return 422, {"msg": f"bad fields {fields}"}
            tokens = self.session(body["email"])
            fragment = urlencode(
                {
                    "access_token": tokens["access_token"],
                    "refresh_token": tokens["refresh_token"],
                    "expires_in": 3600,
                    "token_type": "bearer",
                    "type": "magiclink",
                }
            )
            self.magic_links.append(f"{query['redirect_to'][0]}#{fragment}")
            return 200, {}
        return 404, {"msg": "not a GoTrue endpoint"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_OPTIONS(self) -> None:  # the browser's CORS preflight
                self.send_response(204)
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Access-Control-Allow-Methods", "POST")
                self.send_header("Access-Control-Allow-Headers", "apikey, content-type")
                self.end_headers()

            def do_POST(self) -> None:
                parts = urlsplit(self.path)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                problem = None
                if self.headers.get("apikey") != ANON_KEY:
                    problem = "no anon key in the apikey header"
                elif not (self.headers.get("Content-Type") or "").startswith("application/json"):
                    problem = "the body is not JSON"
                try:
                    body = json.loads(raw)
                except ValueError:
                    body, problem = None, problem or "the body is not valid JSON"
                status, answer = (
                    (401, {"msg": problem})
                    if problem
                    else fake.answer(parts.path, parse_qs(parts.query), body)
                )
                if status in (401, 404, 422):
                    fake.invalid.append(f"{self.path}: {answer}")
                self._send(status, answer)

        return Handler


@pytest.fixture(scope="module")
def gotrue() -> Iterator[FakeGoTrue]:
    fake = FakeGoTrue({"ada@example.com": "correct horse battery staple"})
    fake.start()
    yield fake
    fake.stop()
