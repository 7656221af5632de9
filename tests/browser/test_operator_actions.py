"""Acting from the dashboard in a browser: failover, rollback, acknowledge; viewers refused."""

from __future__ import annotations

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from masters.choices import FailoverStatus, Severity
from masters.models import FailoverEvent, Message
from monitoring.models import Alert, AlertState
from tests.browser.conftest import log_in

pytestmark = pytest.mark.django_db(transaction=True)


def queue_on(master, count: int) -> None:
    Message.objects.bulk_create(
        Message(to="+971501234567", text="hi", body_hash=f"h{i}", master=master)
        for i in range(count)
    )


def firing_alert(master) -> Alert:
    now = timezone.now()
    return Alert.objects.create(
        dedup_key=f"master.down:{master.pk}",
        rule="master_down",
        severity=Severity.CRITICAL,
        title=f"Connection to {master.display_name} lost",
        master=master,
        fired_at=now,
        last_seen_at=now,
    )


def test_an_operator_fails_a_master_over_and_rolls_it_back(web, new_page, operator, viewer, trio):
    failed, backup, _ = trio
    queue_on(failed, 3)
    watcher = new_page()  # a viewer watching: the log changes in their browser too
    log_in(watcher, web, viewer)
    page = new_page()
    log_in(page, web, operator)

    page.locator(f"#master-{failed.pk}").get_by_role("link", name="Fail over…").click()
    page.get_by_role("button", name="Fail over now").click()
    page.wait_for_url(f"{web.url}/")
    failover = FailoverEvent.objects.get()
    assert failover.status == FailoverStatus.COMPLETED and failover.backup_master == backup
    assert Message.objects.filter(master=backup).count() == 3
    for browser_page in (page, watcher):
        log = browser_page.locator(f"#failover-{failover.pk}")
        expect(log).to_contain_text("Completed")
        expect(log).to_contain_text("3 messages")
        expect(log).to_contain_text(operator.get_username())

    page.locator(f"#failover-{failover.pk}").get_by_role("link", name="Roll back…").click()
    page.get_by_role("button", name="Roll back now").click()
    page.wait_for_url(f"{web.url}/")
    failover.refresh_from_db()
    assert failover.status == FailoverStatus.ROLLED_BACK
    assert Message.objects.filter(master=failed).count() == 3
    for browser_page in (page, watcher):
        expect(browser_page.locator(f"#failover-{failover.pk}")).to_contain_text("Rolled back")
    expect(page.locator(f"#failover-{failover.pk}")).not_to_contain_text("Roll back…")


def test_an_operator_acknowledges_an_alert(web, new_page, operator, viewer, trio):
    alert = firing_alert(trio[0])
    watcher = new_page()
    log_in(watcher, web, viewer)
    page = new_page()
    log_in(page, web, operator)

    row = page.locator(f"#alert-{alert.pk}")
    expect(row).to_contain_text("Firing")
    row.get_by_role("link", name="Acknowledge…").click()
    page.get_by_role("button", name="Acknowledge").click()  # the confirmation page
    page.wait_for_url(f"{web.url}/")

    alert.refresh_from_db()
    assert alert.state == AlertState.ACKNOWLEDGED and alert.acknowledged_by == operator
    for browser_page in (page, watcher):
        expect(browser_page.locator(f"#alert-{alert.pk}")).to_contain_text(
            f"Acknowledged by {operator.get_username()}"
        )
    acknowledge = page.locator(f"#alert-{alert.pk}").get_by_role("link", name="Acknowledge…")
    expect(acknowledge).to_have_count(0)


def test_a_viewer_sees_no_action_and_a_forged_post_is_refused(web, new_page, viewer, trio):
    failed, backup, _ = trio
    alert = firing_alert(failed)
    done = FailoverEvent.objects.create(
        failed_master=failed,
        backup_master=backup,
        status=FailoverStatus.COMPLETED,
        reason="earlier",
        started_at=timezone.now(),
    )
    page = new_page()
    log_in(page, web, viewer)
    expect(page.locator(f"#alert-{alert.pk}")).to_contain_text("Firing")
    for name in ["Fail over…", "Maintenance…", "Roll back…"]:
        expect(page.get_by_role("link", name=name)).to_have_count(0)
    expect(page.get_by_role("link", name="Acknowledge…")).to_have_count(0)

    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    forged = {
        f"/masters/{failed.external_id}/failover/": {"reason": "forged"},
        f"/failovers/{done.pk}/rollback/": {},
        f"/alerts/{alert.pk}/acknowledge/": {},
        f"/masters/{failed.external_id}/maintenance/": {"state": "on"},
    }
    for path, form in forged.items():
        response = page.request.post(
            f"{web.url}{path}", form=form, headers={"X-CSRFToken": token, "Referer": web.url}
        )
        assert response.status == 403, path
    assert FailoverEvent.objects.get() == done and done.status == FailoverStatus.COMPLETED
    alert.refresh_from_db()
    assert alert.state == AlertState.FIRING
