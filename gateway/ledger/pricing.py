"""Pricing: what a request costs, in integer micro-units of the price's currency.

Prices are versioned: each (model, deployment) has a list of versions by `effective_from`, and
a request is priced at the version in force when it *started*. A deployment's own price (a
self-hosted replica's chargeback) wins over the model-wide one. No price in force → None, and
the ledger records the request as unpriced: never as free.

Cost = (prompt x input + completion x output) / 1e6 micro-units, rounded half up once per
request, in integer arithmetic. Budgets reserve the worst case, rounded up.

The `PriceBook` is an immutable in-memory snapshot (the hot path never reads the database);
`PriceCatalog` swaps in a fresh one, loaded from the `prices` table, every `refresh_s`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

MICROS_PER_MTOK_DIVISOR = 1_000_000  # prices are per million tokens


@dataclass(frozen=True, slots=True)
class Price:
    """One price version: micro-units of `currency` per million input/output tokens."""

    version_id: int
    model: str
    deployment: str  # "" = every deployment of the model
    currency: str
    input_micros_per_mtok: int
    output_micros_per_mtok: int
    effective_from_s: float


def cost_micros(price: Price, prompt_tokens: int, completion_tokens: int) -> int:
    """The cost of a request's tokens, rounded half up to a whole micro-unit."""
    scaled = (
        prompt_tokens * price.input_micros_per_mtok
        + completion_tokens * price.output_micros_per_mtok
    )
    return (scaled + MICROS_PER_MTOK_DIVISOR // 2) // MICROS_PER_MTOK_DIVISOR


def worst_case_micros(price: Price, prompt_tokens: int, output_tokens: int) -> int:
    """An upper bound of what a request can cost (rounded up), for budget reservations."""
    scaled = (
        prompt_tokens * price.input_micros_per_mtok + output_tokens * price.output_micros_per_mtok
    )
    return -(-scaled // MICROS_PER_MTOK_DIVISOR)


class PriceBook:
    """All price versions, indexed for `price_at`."""

    def __init__(self, prices: Iterable[Price] = ()) -> None:
        versions: dict[tuple[str, str], list[Price]] = {}
        for price in prices:
            versions.setdefault((price.model, price.deployment), []).append(price)
        self._versions = {
            key: sorted(found, key=lambda p: p.effective_from_s) for key, found in versions.items()
        }
        self._starts = {
            key: [p.effective_from_s for p in found] for key, found in self._versions.items()
        }

    def __len__(self) -> int:
        return sum(len(v) for v in self._versions.values())

    def price_at(self, model: str, deployment: str | None, at_s: float) -> Price | None:
        """The version in force at `at_s`: the deployment's own, else the model-wide one."""
        for key in ((model, deployment or ""), (model, "")):
            starts = self._starts.get(key)
            if starts:
                index = bisect.bisect_right(starts, at_s) - 1
                if index >= 0:
                    return self._versions[key][index]
        return None


class PriceCatalog:
    """The current `PriceBook`, replaced whole on refresh (readers never see half a book)."""

    def __init__(self, book: PriceBook | None = None) -> None:
        self.book = book or PriceBook()

    def replace(self, book: PriceBook) -> None:
        """Swap in a freshly loaded book."""
        self.book = book
