"""Reconciliation: does the ledger hold every request the gateways served?

For each UTC hour, three independent numbers: `served`, counted by the gateways when they
appended each record to the journal (a Redis hash, incremented in the same round trip as the
XADD); `ledger`, rows in `usage_events`; `pending`, records still in the stream (appended, not
yet committed by a writer). A complete ledger has served = ledger + pending for every hour;
any other hour is listed with its difference. Records spooled on a gateway's disk during a
Redis outage are counted when they are replayed into the stream, so they never show as lost.

In embedded mode the served counts live in the gateway process (`MemoryJournal.served`), so
the report is only available from the running gateway (the admin API), not from the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db.usage import rows_per_hour
from gateway.ledger.record import record_hour


@dataclass(frozen=True, slots=True)
class HourCount:
    """One hour of the reconciliation report."""

    hour: str
    served: int
    ledger: int
    pending: int

    @property
    def missing(self) -> int:
        """Served but neither in the ledger nor waiting in the journal (0 when complete)."""
        return self.served - self.ledger - self.pending


async def reconcile(
    sessions: async_sessionmaker[AsyncSession],
    served: dict[str, int],
    pending_payloads: list[bytes],
    since: datetime,
    until: datetime,
) -> list[HourCount]:
    """The report for every hour in [since, until) that has served or ledger counts."""
    async with sessions() as session:
        ledger = await rows_per_hour(session, since, until)
    pending: dict[str, int] = {}
    for payload in pending_payloads:
        hour = record_hour(payload)
        pending[hour] = pending.get(hour, 0) + 1
    first, last = since.strftime("%Y%m%d%H"), until.strftime("%Y%m%d%H")
    hours = {h for h in served if first <= h <= last} | set(ledger)
    return [
        HourCount(h, served.get(h, 0), ledger.get(h, 0), pending.get(h, 0)) for h in sorted(hours)
    ]


def render(report: list[HourCount]) -> list[str]:
    """Text lines for the CLI: a header, one line per hour, a verdict."""
    lines = ["hour (UTC)    served  ledger  pending  missing"]
    lines += [
        f"{r.hour}  {r.served:>7} {r.ledger:>7} {r.pending:>8} {r.missing:>8}" for r in report
    ]
    bad = [r for r in report if r.missing > 0]  # negative: committed, not yet acked
    lines.append(
        "complete: every served request is in the ledger or on its way"
        if not bad
        else f"INCOMPLETE: {sum(r.missing for r in bad)} request(s) unaccounted for in "
        f"{len(bad)} hour(s): {', '.join(r.hour for r in bad)}"
    )
    return lines
