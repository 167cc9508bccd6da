"""`/admin/v1/reconciliation?hours=`: does the ledger hold every request the gateways served?

Per UTC hour of the last `hours` (the current one included): requests counted as served by
the journal, rows in the ledger, records still waiting in the journal, and the difference
(`missing`; negative only while a committed batch awaits its acknowledgement). `complete` is
true when no hour misses anything. See `gateway/ledger/reconcile.py` for the counts.

Failure mode: the served counts and pending records come from the journal the app wires in
(`AdminServices.served_counts` / `pending_usage`); without them, or when the journal cannot be
read (Redis down), the answer is 503, never a partial report.
"""

from __future__ import annotations

from datetime import timedelta

from gateway.admin.api import READERS, Call, Operation, Reply
from gateway.admin.schemas import ReconcileHour, ReconcileQuery, ReconcileReport
from gateway.errors import DependencyUnavailable
from gateway.ledger.reconcile import reconcile


class ReconciliationUnavailable(DependencyUnavailable):
    """503: this process cannot read the journal's served counts or pending records."""

    code = "reconciliation_unavailable"


async def reconciliation_report(call: Call) -> Reply:
    services = call.services
    if services.served_counts is None or services.pending_usage is None:
        raise ReconciliationUnavailable(
            "Reconciliation is not available on this gateway: it was started without access "
            "to the usage journal's served counts."
        )
    query: ReconcileQuery = call.query
    until = call.now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    since = until - timedelta(hours=query.hours)
    try:
        served = await services.served_counts()
        pending = await services.pending_usage()
    except Exception as exc:  # Redis or its client; the class name only (no hosts)
        raise ReconciliationUnavailable(
            f"The usage journal cannot be read ({type(exc).__name__}); try again later."
        ) from exc
    report = await reconcile(services.sessions, served, pending, since, until)
    return Reply(
        ReconcileReport(
            complete=all(hour.missing <= 0 for hour in report),
            hours=[
                ReconcileHour(
                    hour=h.hour, served=h.served, ledger=h.ledger, pending=h.pending,
                    missing=h.missing,
                )
                for h in report
            ],
        )
    )  # fmt: skip


OPERATIONS = [
    Operation("GET", "/reconciliation", reconciliation_report,
              "Served requests vs ledger rows per hour", "reconciliation", roles=READERS,
              query=ReconcileQuery, response=ReconcileReport, errors=(503,)),
]  # fmt: skip
