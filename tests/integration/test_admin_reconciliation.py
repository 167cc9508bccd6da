"""`/admin/v1/reconciliation`: served vs ledger vs pending per hour, or 503 without a journal."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from gateway.ledger.record import hour_of
from tests.integration.admin_api import AdminApi, admin_api, usage_record


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminApi]:
    with admin_api(tmp_path_factory.mktemp("admin-reconciliation")) as running:
        yield running


class FakeJournal:
    """What the app wires in: served counts per hour and payloads not yet written."""

    def __init__(self) -> None:
        self.served: dict[str, int] = {}
        self.pending: list[bytes] = []
        self.broken = False

    async def served_counts(self) -> dict[str, int]:
        if self.broken:
            raise ConnectionError("redis://secret-host:6379 is down")
        return dict(self.served)

    async def pending_usage(self) -> list[bytes]:
        return list(self.pending)


@pytest.fixture
def journal(api: AdminApi) -> Iterator[FakeJournal]:
    fake = FakeJournal()
    wired = api.services.served_counts, api.services.pending_usage
    api.services.served_counts = fake.served_counts
    api.services.pending_usage = fake.pending_usage
    try:
        yield fake
    finally:
        api.services.served_counts, api.services.pending_usage = wired


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def test_without_a_journal_the_answer_is_503(api: AdminApi) -> None:
    wired = api.services.served_counts, api.services.pending_usage
    api.services.served_counts = api.services.pending_usage = None
    try:
        response = api.get("/reconciliation")
    finally:
        api.services.served_counts, api.services.pending_usage = wired
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "reconciliation_unavailable"
    assert "not available" in response.json()["error"]["message"]


def test_the_app_wires_its_own_journal(api: AdminApi) -> None:
    """Embedded mode: the in-process journal's counts (nothing served yet: complete)."""
    response = api.get("/reconciliation", token=api.finance)
    assert response.status_code == 200, response.text
    assert response.json()["complete"] is True


def test_complete_when_served_is_ledger_plus_pending(api: AdminApi, journal: FakeJournal) -> None:
    now = datetime.now(UTC)
    earlier = now - timedelta(hours=2)
    tenant = api.new_tenant()
    api.record_usage(usage_record(tenant, now), usage_record(tenant, earlier))
    waiting = usage_record(tenant, now)
    journal.served = {hour_of(_ms(now)): 2, hour_of(_ms(earlier)): 1}
    journal.pending = [waiting.encode()]

    report = api.get("/reconciliation", params={"hours": 3}, token=api.finance)
    assert report.status_code == 200, report.text
    assert report.json() == {
        "complete": True,
        "hours": [
            {"hour": hour_of(_ms(earlier)), "served": 1, "ledger": 1, "pending": 0, "missing": 0},
            {"hour": hour_of(_ms(now)), "served": 2, "ledger": 1, "pending": 1, "missing": 0},
        ],
    }

    # A served request that is neither in the ledger nor pending makes the report incomplete.
    journal.served[hour_of(_ms(now))] = 3
    incomplete = api.get("/reconciliation", params={"hours": 3}).json()
    assert incomplete["complete"] is False
    assert incomplete["hours"][-1]["missing"] == 1

    # The window: one hour is the current hour only.
    assert [h["hour"] for h in api.get("/reconciliation", params={"hours": 1}).json()["hours"]] == [
        hour_of(_ms(now))
    ]


def test_an_unreadable_journal_is_503_without_details(api: AdminApi, journal: FakeJournal) -> None:
    journal.broken = True
    response = api.get("/reconciliation")
    assert response.status_code == 503
    assert "secret-host" not in response.text
    assert "ConnectionError" in response.json()["error"]["message"]


@pytest.mark.parametrize("hours", ["0", "745", "a day"])
def test_invalid_hours_are_422(api: AdminApi, hours: str) -> None:
    response = api.get("/reconciliation", params={"hours": hours})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "hours"


def test_finance_reads_and_others_are_refused(api: AdminApi, journal: FakeJournal) -> None:
    assert api.get("/reconciliation", token=api.finance).status_code == 200
    assert api.get("/reconciliation", params={"days": 1}).status_code == 422  # unknown field
    for token in (None, api.tenant_key):
        assert api.get("/reconciliation", token=token).status_code == 401
