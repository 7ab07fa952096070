"""The dashboard in headless Chromium against a real server with trained models.

Each test opens a fresh tab, logs in with the admin token and drives one page; a screenshot of
each page goes to .cache/screenshots/. The rollback test runs last: it changes the live version.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page

from tests.support.dashboard import (
    ALS_CONFIG,
    TOKEN,
    Deployment,
    job_now,
    log_in,
    screenshot,
    wait_for,
)

pytestmark = pytest.mark.slow


def chart_data(page: Page, canvas: str) -> dict[str, Any]:
    """Labels and datasets of the Chart.js chart drawn on a canvas."""
    return dict(
        page.evaluate(
            """(id) => {
                const chart = Chart.getChart(id);
                return {labels: chart.data.labels,
                        datasets: chart.data.datasets.map(d => ({label: d.label, data: d.data}))};
            }""",
            canvas,
        )
    )


def open_tab(page: Page, tab: str) -> None:
    """Click a tab of the dashboard's navigation."""
    page.click(f"a.tab[data-tab={tab}]")
    page.wait_for_selector(f"#tab-{tab}:not([hidden])")


def test_login_then_the_overview_shows_the_live_version_and_ingest(
    page: Page, deployment: Deployment
) -> None:
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#token", "not-the-token")
    page.click("#login-button")
    page.wait_for_selector("#login-error:has-text('Login failed')")
    assert page.locator("#dashboard").is_hidden()

    log_in(page)
    assert TOKEN not in page.url
    assert page.url.endswith("/dashboard")
    assert page.evaluate("sessionStorage.getItem('mfserve.adminToken')") == TOKEN
    live = f"live version: {deployment.flexmf_version} (flexmf-explicit)"
    page.wait_for_selector(f"#live-version:has-text('{live}')")
    page.wait_for_selector(f"#active-summary:has-text('Version {deployment.flexmf_version}')")

    stats = deployment.api.get("/admin/stats").json()
    page.wait_for_selector(f"#count-ratings:has-text('{stats['ratings']}')")
    assert page.inner_text("#count-users") == "60"
    assert page.inner_text("#count-items") == "40"
    ingest = chart_data(page, "ingest-chart")
    assert len(ingest["labels"]) == 7 * 24
    assert sum(ingest["datasets"][0]["data"]) == stats["ratings"]
    print("screenshot:", screenshot(page, "overview"))

    # logging out forgets the token
    page.click("#logout")
    page.wait_for_selector("#login:not([hidden])")
    assert page.evaluate("sessionStorage.getItem('mfserve.adminToken')") is None


def test_curves_show_every_epoch_of_finished_als_and_flexmf_jobs(
    page: Page, deployment: Deployment
) -> None:
    log_in(page)
    open_tab(page, "jobs")
    page.click(f"button[data-curve='{deployment.als_job}']")
    page.wait_for_selector(
        f"#curve-panel[data-job='{deployment.als_job}'][data-status='succeeded']"
    )
    als = chart_data(page, "curve-chart")
    epochs = ALS_CONFIG["epochs"]
    assert als["labels"] == [str(e) for e in range(1, epochs + 1)]
    assert [d["label"] for d in als["datasets"]] == ["training loss"]
    assert all(loss is not None for loss in als["datasets"][0]["data"])
    print("screenshot:", screenshot(page, "curve-als"))

    page.click(f"button[data-curve='{deployment.flexmf_job}']")
    page.wait_for_selector(f"#curve-panel[data-job='{deployment.flexmf_job}']")
    flexmf = chart_data(page, "curve-chart")
    trained = job_now(deployment.api, deployment.flexmf_job)["progress"]["epoch"]
    assert flexmf["labels"] == [str(e) for e in range(1, trained + 1)]
    loss, rmse = (d["data"] for d in flexmf["datasets"])
    assert [d["label"] for d in flexmf["datasets"]] == ["training loss", "validation RMSE"]
    assert all(v is not None for v in loss + rmse)
    assert rmse[-1] < rmse[0]
    print("screenshot:", screenshot(page, "curve-flexmf"))


def test_a_running_job_moves_without_a_reload_and_its_curve_grows(
    page: Page, deployment: Deployment
) -> None:
    # far more epochs than the test waits for: it is cancelled once the page saw it move
    config = {"embedding_size": 8, "epochs": 100_000, "batch_size": 256}
    reply = deployment.api.post(
        "/admin/retrain", json={"algorithm": "flexmf-implicit", "config": config}
    )
    job = int(reply.json()["job_id"])
    log_in(page)
    open_tab(page, "jobs")
    page.evaluate("window.__notReloaded = true")
    row = f"#jobs tr[data-job='{job}']"
    page.wait_for_selector(f"{row}[data-status='running'] progress")

    seen: set[str] = set()

    def moved() -> bool:
        seen.add(page.inner_text(f"{row} td.progress"))
        return len(seen) >= 3

    wait_for("the page to show the job's progress moving", moved, deployment.server)
    assert all(text.strip().endswith("/100000") for text in seen)

    page.click(f"button[data-curve='{job}']")
    page.wait_for_selector(f"#curve-panel[data-job='{job}'][data-status='running']")
    first = int(page.get_attribute("#curve-panel", "data-points") or 0)
    wait_for(
        "the open curve to grow",
        lambda: int(page.get_attribute("#curve-panel", "data-points") or 0) > first,
        deployment.server,
    )
    print("screenshot:", screenshot(page, "job-running"))

    assert deployment.api.post(f"/admin/jobs/{job}/cancel").status_code == 200
    page.wait_for_selector(f"{row}[data-status='cancelled']")
    page.wait_for_selector(f"#curve-panel[data-job='{job}'][data-status='cancelled']")
    assert page.evaluate("window.__notReloaded") is True
    kept = deployment.api.get(f"/admin/jobs/{job}/curve").json()["points"]
    assert len(kept) >= first + 1
    assert [p["epoch"] for p in kept] == list(range(1, len(kept) + 1))


def test_user_lookup_shows_latest_ratings_beside_recommendations(
    page: Page, deployment: Deployment
) -> None:
    log_in(page)
    open_tab(page, "users")
    page.fill("#user-id", "u3")
    page.click("#user-form button")
    page.wait_for_selector("#user-source")
    served = deployment.api.get("/recommend/u3", params={"n": 10}).json()
    assert page.inner_text("#user-source") == served["source"] == "model"

    stored = deployment.api.get("/users/u3/ratings", params={"limit": 1000}).json()["items"]
    latest = page.locator("#user-ratings tbody tr")
    assert latest.count() == min(len(stored), 20) > 0
    newest = max(stored, key=lambda r: r["timestamp"])["item"]
    assert latest.first.locator("td").first.inner_text() == newest
    assert latest.first.locator("td").nth(1).inner_text().startswith("Film number ")
    recs = page.locator("#user-recs tbody tr")
    assert [recs.nth(r).locator("td").first.inner_text() for r in range(recs.count())] == [
        item["item"] for item in served["items"]
    ]
    assert recs.first.locator("td").nth(1).inner_text().startswith("Film number ")
    print("screenshot:", screenshot(page, "user-lookup"))


def test_item_lookup_shows_metadata_and_similar_items(page: Page, deployment: Deployment) -> None:
    log_in(page)
    open_tab(page, "items")
    page.fill("#item-id", "i5")
    page.click("#item-form button")
    page.wait_for_selector("#item-name:has-text('i5')")
    assert "Film number 5" in page.inner_text("#item-meta")
    assert "odd" in page.inner_text("#item-meta")
    page.wait_for_selector("#similar-summary:has-text('model version')")
    similar = deployment.api.get("/items/i5/similar", params={"n": 10}).json()["items"]
    rows = page.locator("#item-similar tbody tr")
    assert [rows.nth(r).locator("td").first.inner_text() for r in range(rows.count())] == [
        item["item"] for item in similar
    ]
    print("screenshot:", screenshot(page, "item-lookup"))


def test_rollback_needs_a_confirmation_then_the_old_version_is_live(
    page: Page, deployment: Deployment
) -> None:
    old, new = deployment.als_version, deployment.flexmf_version
    log_in(page)
    open_tab(page, "models")
    page.wait_for_selector(f"#versions tr[data-version='{new}'].active")
    assert page.locator(f"button[data-activate='{new}']").count() == 0

    page.click(f"button[data-activate='{old}']")
    page.wait_for_selector("#confirm[open]")
    page.click("#confirm-cancel")
    page.wait_for_selector("#confirm", state="hidden")
    assert deployment.api.get("/models/active").json()["version"] == new

    page.click(f"button[data-activate='{old}']")
    page.wait_for_selector(f"#confirm[open] >> text=Activate version {old}?")
    print("screenshot:", screenshot(page, "rollback-confirm"))
    page.click("#confirm-ok")
    page.wait_for_selector(f"#live-version:has-text('live version: {old} (als-biased)')")
    page.wait_for_selector(f"#versions tr[data-version='{old}'].active")
    assert deployment.api.get("/models/active").json()["version"] == old
    wait_for(
        "the server to serve the rolled-back version",
        lambda: deployment.api.get("/recommend/u3").json().get("model_version") == old,
        deployment.server,
    )
    # the table follows without a reload once this API process serves it
    page.wait_for_selector(f"#versions tr[data-version='{old}'] td:text-is('active, served')")
    print("screenshot:", screenshot(page, "models"))
