"""One real API server (with its worker) on SQLite, two trained models, and headless Chromium.

Built once for the module: ratings of a planted low-rank structure with item titles, an
`als-biased` job and a `flexmf-explicit` job trained to the end. The browser is Debian's
chromium (`/usr/bin/chromium`, installed by `make browser`) driven by Playwright; no browser is
downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from service.db.migrations import upgrade_to_head
from tests.support.dashboard import (
    ALS_CONFIG,
    AUTH,
    CHROMIUM,
    CHROMIUM_FLAGS,
    FLEXMF_CONFIG,
    HANG_GUARD_S,
    TOKEN,
    Deployment,
    seed,
    train,
)
from tests.support.server import run_api_process


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A migrated SQLite database, the API with its worker, and two trained versions."""
    root = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{root / 'dashboard.db'}"
    upgrade_to_head(url)
    env = {
        "MFSERVE_ADMIN_TOKEN": TOKEN,
        "MFSERVE_ARTIFACT_DIR": str(root / "artifacts"),
        "MFSERVE_RETRAIN_INTERVAL": "0",
        "MFSERVE_RETRAIN_MIN_NEW_RATINGS": "0",
        "MFSERVE_WORKER_POLL_INTERVAL": "0.2",
        "MFSERVE_REGISTRY_POLL_INTERVAL": "0.2",
    }
    with (
        run_api_process(url, env=env, with_worker=True, startup_timeout=HANG_GUARD_S) as server,
        httpx.Client(base_url=server.base_url, headers=AUTH, timeout=30.0) as api,
    ):
        seed(api)
        als = train(server, api, "als-biased", ALS_CONFIG)
        flexmf = train(server, api, "flexmf-explicit", FLEXMF_CONFIG)
        yield Deployment(
            server=server,
            api=api,
            als_job=als["job_id"],
            flexmf_job=flexmf["job_id"],
            als_version=als["version"],
            flexmf_version=flexmf["version"],
        )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian chromium."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, deployment: Deployment) -> Iterator[Page]:
    """A fresh browser tab (its own sessionStorage) on the dashboard, not yet logged in.

    Every request the page makes is checked to stay on the server: the dashboard works offline.
    """
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(HANG_GUARD_S * 1000)
    elsewhere: list[str] = []
    tab.on(
        "request",
        lambda request: (
            None
            if request.url.startswith(deployment.server.base_url)
            else elsewhere.append(request.url)
        ),
    )
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    # what the page's Content-Security-Policy refused (failed 4xx fetches are logged too: kept)
    tab.on(
        "console",
        lambda message: (
            errors.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    tab.goto(f"{deployment.server.base_url}/dashboard")
    try:
        yield tab
    finally:
        context.close()
    assert elsewhere == [], f"the dashboard reached outside the server: {elsewhere}"
    assert errors == [], f"script errors on the page: {errors}"
