"""The dashboard in a real browser: Playwright drives Debian's Chromium against a real
`recsvc serve` process on the test database, loaded with a small slice of the demo data set.

A read key sees every page with data and cannot train; an admin key trains, watches the job
finish and rolls back; a learner's recommendations come with reasons; no page requests another
host or logs a console error; the key appears in no URL the browser requested and nowhere in
the server's log. Each page's screenshot is written to $DASHBOARD_SCREENSHOTS_DIR (default: a
folder under the system's temporary directory, printed at the end of the module). With
DASHBOARD_UPDATE_DOCS=1 the overview and learner screenshots also replace docs/*.png.

Chromium comes from Debian (`apt-get install chromium fonts-noto-cjk`); Playwright's own browser
download cannot work here. Without it the tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.pool import NullPool

from conftest import TABLES, free_port, rows
from recsvc import db
from recsvc.config import Settings
from test_models import load_demo

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
READ_KEY = "k-dashboard-read-only"
ADMIN_KEY = "k-dashboard-admin-all"
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = Path(
    os.environ.get("DASHBOARD_SCREENSHOTS_DIR")
    or Path(tempfile.gettempdir()) / "recsvc-dashboard-screenshots"
)
VIEWPORT = {"width": 1280, "height": 900}
FORBIDDEN_LOAD = "Failed to load resource: the server responded with a status of 403 (Forbidden)"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: the browser tests must run)")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def clean_tables() -> None:
    """Overrides conftest's: this module's tests share the data set `served` loaded once."""


@dataclass
class Served:
    url: str
    log: Path
    learner: str
    course: str
    first_version: str


def _wait_job(url: str, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(
            f"{url}/v1/models/jobs/{job_id}", headers={"X-API-Key": READ_KEY}, timeout=10
        ).json()
        if job["state"] in ("succeeded", "failed"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"training job {job_id} did not finish")


@pytest.fixture(scope="module")
def served(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`recsvc serve` on the test database with 300 learners and 80 courses of demo data whose
    newest events are from now, and one trained model."""
    tmp = tmp_path_factory.mktemp("dashboard")

    async def clean() -> None:
        engine = db.make_engine(database_url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                for table in TABLES:
                    await conn.execute(text(f"DELETE FROM {table}"))  # noqa: S608 (constants)
        finally:
            await engine.dispose()

    asyncio.run(clean())
    settings = Settings(database_url=database_url, api_keys={ADMIN_KEY: ["admin"]})
    load_demo(settings, tmp / "data", n_users=300, n_items=80, end=datetime.now(UTC))
    learner = asyncio.run(
        rows(
            database_url,
            "SELECT user_id FROM events GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1",
        )
    )[0]
    course = asyncio.run(
        rows(database_url, "SELECT id FROM items WHERE title <> '' ORDER BY id LIMIT 1")
    )[0]

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSVC_", "PROMETHEUS_"))}
    env |= {
        "RECSVC_DATABASE_URL": database_url,
        "RECSVC_API_KEYS": json.dumps({ADMIN_KEY: ["admin", "read", "ingest"], READ_KEY: ["read"]}),
        "RECSVC_MODELS_DIR": str(tmp / "models"),
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    log = tmp / "serve.log"
    with log.open("wb") as err:
        process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "recsvc", "serve", "--port", str(port)],
            env=env,
            stdout=err,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"recsvc serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        admin = {"X-API-Key": ADMIN_KEY}
        job = httpx.post(f"{url}/v1/models/train", headers=admin, timeout=30).json()
        done = _wait_job(url, job["job_id"])
        assert done["state"] == "succeeded", done
        # Wait until the server serves it, then serve a few lists (the strategy chart).
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/readyz", timeout=5).json()["model"] != done["version"]:
            assert time.monotonic() < deadline, "the trained model was not loaded"
            time.sleep(0.2)
        for user in (learner, "someone-new"):
            httpx.get(f"{url}/v1/users/{user}/recommendations", headers=admin, timeout=10)
        yield Served(url, log, learner, course, done["version"])
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def browser(served: Served) -> Iterator[Any]:
    """One Chromium for the module; started after `served`, whose set-up runs event loops
    (Playwright's sync API keeps one running in this thread)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium fonts-noto-cjk)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield launched
        finally:
            launched.close()
    print(f"\ndashboard screenshots: {SCREENSHOTS}")
    if os.environ.get("DASHBOARD_UPDATE_DOCS") == "1":  # the README's pictures
        for name in ("overview", "learner"):
            shutil.copyfile(SCREENSHOTS / f"{name}.png", ROOT / "docs" / f"dashboard-{name}.png")


@dataclass
class Watched:
    """A browser page and what it did: every URL it requested, console errors, page errors
    and the dialogs it showed (all accepted)."""

    page: Any
    base: str
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def sign_in(self, key: str) -> None:
        self.page.goto(f"{self.base}/dashboard/")
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_selector("body[data-overview=drawn]")

    def open(self, hash_: str) -> None:
        self.page.evaluate("h => { location.hash = h }", hash_)
        name = hash_.lstrip("#").split("/")[0]
        self.page.wait_for_selector(f"[data-page={name}][data-loaded=true]")

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def check(self, allowed_console: tuple[str, ...] = ()) -> None:
        foreign = [u for u in self.requests if not u.startswith((f"{self.base}/", "data:"))]
        assert not foreign, f"requests to other hosts: {foreign}"
        unexpected = [e for e in self.console_errors if e not in allowed_console]
        assert not unexpected, f"console errors: {unexpected}"
        for key in (READ_KEY, ADMIN_KEY):
            assert not [u for u in self.requests if key in u], "the key is in a URL"


ALL_REQUESTS: list[str] = []


@pytest.fixture
def watched(browser: Any, served: Served) -> Iterator[Watched]:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(30_000)
    seen = Watched(page, served.url)
    page.on("request", lambda request: seen.requests.append(request.url))
    page.on(
        "console",
        lambda message: (
            seen.console_errors.append(message.text) if message.type == "error" else None
        ),
    )
    page.on("pageerror", lambda error: seen.console_errors.append(f"page error: {error}"))

    def accept(dialog: Any) -> None:
        seen.dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    try:
        yield seen
    finally:
        ALL_REQUESTS.extend(seen.requests)
        context.close()


def test_read_key_sees_every_page_with_data(watched: Watched, served: Served) -> None:
    page = watched.page
    watched.sign_in(READ_KEY)
    assert page.locator("#role").inner_text() == "Signed in: read key"
    cards = page.locator("#overview-cards")
    assert cards.locator("#card-readiness .value").inner_text() == "ready"
    # Counted in the background: shown by the first answer, or by a refresh a few s later.
    page.wait_for_function(
        "() => document.querySelector('#card-learners .value').textContent === '300'",
        timeout=20_000,
    )
    assert cards.locator("#card-courses .value").inner_text() == "80"
    assert int(cards.locator("#card-events .value").inner_text().replace(",", "")) > 1000
    assert cards.locator("#card-model .value").inner_text() == served.first_version
    assert "vs popularity" in cards.locator("#card-model .sub").inner_text()
    assert page.locator("#chart-24h[data-drawn] canvas").count() == 1
    assert page.locator("#chart-7d[data-drawn] canvas").count() == 1
    assert page.locator("#strategies td", has_text="als").count() >= 1
    # The overview refreshes on its own.
    stamp = page.locator("#overview-updated").inner_text()
    page.wait_for_function(
        "s => document.querySelector('#overview-updated').textContent !== s", arg=stamp
    )
    watched.shot("overview")

    watched.open("#models")
    row = page.locator(f"tr[data-version='{served.first_version}']")
    assert row.get_attribute("data-status") == "active"
    assert page.locator("#chart-ndcg[data-drawn] canvas").count() == 1
    watched.shot("models")
    # A read key cannot train: the server refuses, the page says so, nothing is queued.
    page.get_by_role("button", name="Train a new model").click()
    page.wait_for_selector("#models-error .error")
    assert "403" in page.locator("#models-error").inner_text()
    assert watched.dialogs and "training" in watched.dialogs[-1]
    assert page.locator("tr[data-version]").count() == 1

    watched.open(f"#learner/{served.learner}")
    page.wait_for_selector("#portrait table")
    page.wait_for_selector("#timeline tbody tr")
    page.wait_for_selector("#user-recs li")
    watched.shot("learner")

    watched.open(f"#course/{served.course}")
    assert page.locator("#course-title").inner_text()
    page.wait_for_selector("#similar-list li")
    page.wait_for_selector("#audience tbody tr")
    watched.shot("course")

    watched.open("#segments")
    assert page.locator("tr[data-segment]").count() >= 2
    page.get_by_role("button", name="Show learners of segment 0").click()
    page.wait_for_selector("#segment-members a")
    watched.shot("segments")
    watched.check(allowed_console=(FORBIDDEN_LOAD,))


def test_learner_lookup_recommendations_with_reasons(watched: Watched, served: Served) -> None:
    page = watched.page
    watched.sign_in(READ_KEY)
    # By keyboard: the nav link, the labelled field, Enter.
    page.get_by_role("link", name="Learner").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-page=learner][data-loaded=true]")
    page.get_by_label("Learner id").fill(served.learner)
    page.get_by_label("Learner id").press("Enter")
    page.wait_for_selector("#user-recs li")
    recs = page.locator("#user-recs")
    assert recs.locator(".strategy").inner_text().startswith("als")
    assert recs.locator("li").count() == 10
    assert recs.locator(".reasons a").count() >= 1
    assert "score" in recs.locator("li").first.inner_text()
    page.wait_for_selector("#portrait table")  # its own request: may answer after the list
    segment = page.locator("#portrait").inner_text()
    assert "Segment:" in segment and "Interests: categories" in segment

    # The chatbot's request: session items, query, categories, exclude, n.
    first = page.locator("#user-recs li a").first.get_attribute("href").split("/")[-1]
    page.get_by_label("Session items (comma-separated course ids)").fill(served.course)
    page.get_by_label("Query (what the learner typed)").fill("数据分析")
    page.get_by_label("Exclude (comma-separated course ids)").fill(first)
    page.get_by_label("Number of items").fill("5")
    page.get_by_role("button", name="Ask as the chatbot").click()
    page.wait_for_selector("#chatbot-json")
    raw = json.loads(page.locator("#chatbot-json").inner_text())
    assert raw["user_id"] == served.learner
    assert len(raw["items"]) == 5
    assert first not in [item["item_id"] for item in raw["items"]]
    assert page.locator("#chatbot-recs li").count() == 5
    watched.check()


def test_admin_trains_and_rolls_back(watched: Watched, served: Served) -> None:
    page = watched.page
    watched.sign_in(ADMIN_KEY)
    assert "admin" in page.locator("#role").inner_text()
    watched.open("#models")
    page.get_by_role("button", name="Train a new model").click()
    status = page.locator("#job-status")
    page.wait_for_function(
        "() => ['succeeded', 'failed'].includes(document.querySelector('#job-status')"
        ".dataset.state)",
        timeout=120_000,
    )
    assert status.get_attribute("data-state") == "succeeded", status.inner_text()
    page.wait_for_function("() => document.querySelectorAll('tr[data-version]').length === 2")
    new = [
        v
        for v in page.locator("tr[data-version]").evaluate_all(
            "rows => rows.map(r => r.dataset.version)"
        )
        if v != served.first_version
    ][0]
    # Roll back to the first version when the new one took over; else activate the new one.
    first_active = (
        page.locator(f"tr[data-version='{served.first_version}']").get_attribute("data-status")
        == "active"
    )
    target = new if first_active else served.first_version
    page.locator(f"tr[data-version='{target}'] button").click()
    page.wait_for_selector(f"tr[data-version='{target}'][data-status=active]")
    assert any("Start training" in d for d in watched.dialogs)
    assert any(target in d for d in watched.dialogs)
    watched.shot("models-admin")
    active = httpx.get(
        f"{served.url}/v1/models/active", headers={"X-API-Key": READ_KEY}, timeout=10
    ).json()
    assert active["version"] == target
    watched.open("#overview")
    page.wait_for_function(
        "v => document.querySelector('#card-model .value')?.textContent === v", arg=target
    )
    watched.check()


def test_the_key_is_in_no_url_and_not_in_the_server_log(served: Served) -> None:
    """Runs last: every URL the module's pages requested, and the server's whole log."""
    assert ALL_REQUESTS, "the browser tests above did not run"
    for key in (READ_KEY, ADMIN_KEY):
        assert not [u for u in ALL_REQUESTS if key in u]
    hosts = {urlsplit(u).netloc for u in ALL_REQUESTS if not u.startswith("data:")}
    assert hosts == {urlsplit(served.url).netloc}
    log = served.log.read_text()
    assert '"route": "/v1/stats/overview"' in log and '"route": "/dashboard"' in log
    for key in (READ_KEY, ADMIN_KEY):
        assert key not in log
