"""What a request reserves: the buckets `plan_admission` picks (built once per tenant limits and
model, amounts per request) and the budget's bucket of the month (`budget_bucket`)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import MappingProxyType

from gateway.limits.budget import BudgetPolicy, budget_bucket, period_end_text
from gateway.limits.limiter import BucketSpec, ConcurrencySpec
from gateway.limits.policy import RateLimits, TenantLimits, plan_admission

LIMITS = TenantLimits(
    default=RateLimits(rpm=60, tpm=10_000, tpm_burst=20_000),
    models=MappingProxyType({"large": RateLimits(rpm=5, tpm=1_000)}),
    concurrency=4,
)


def _amounts(limits: TenantLimits, model: str, tokens: int) -> list[tuple[str, int, int]]:
    admission = plan_admission(limits, model, tokens)
    assert admission.reserved_tokens == tokens
    return [(spec.name, spec.capacity, amount) for spec, amount in admission.demands]


def test_each_model_has_its_buckets_and_each_request_its_amounts() -> None:
    for tokens in (100, 7, 100):  # the second plan of a model comes from the cache
        assert _amounts(LIMITS, "large", tokens) == [
            ("rpm", 60, 1),
            ("tpm", 20_000, tokens),
            ("rpm:model:large", 5, 1),
            ("tpm:model:large", 1_000, tokens),
        ]
        assert _amounts(LIMITS, "small", tokens) == [("rpm", 60, 1), ("tpm", 20_000, tokens)]
    assert plan_admission(LIMITS, "small", 1).concurrency == ConcurrencySpec(4)


def test_changed_limits_are_a_new_plan() -> None:
    assert _amounts(LIMITS, "large", 1)[3] == ("tpm:model:large", 1_000, 1)
    raised = TenantLimits(
        default=LIMITS.default,
        models=MappingProxyType({"large": RateLimits(rpm=5, tpm=9_000)}),
        concurrency=None,
    )
    assert _amounts(raised, "large", 1)[3] == ("tpm:model:large", 9_000, 1)
    assert plan_admission(raised, "large", 1).concurrency is None
    assert raised == TenantLimits(raised.default, raised.models, None)  # the cache is not compared


def test_the_budget_bucket_is_the_month_and_follows_the_amount() -> None:
    december = datetime(2026, 12, 31, 23, 59, tzinfo=UTC).timestamp()
    january = datetime(2027, 1, 1, 0, 0, tzinfo=UTC).timestamp()
    policy = BudgetPolicy(amount_micros=5_000_000, currency="EUR")
    assert budget_bucket(policy, december) == BucketSpec("budget:2026-12", 5_000_000, 0)
    assert period_end_text(december) == "2027-01-01T00:00:00Z"
    assert budget_bucket(policy, january) == BucketSpec("budget:2027-01", 5_000_000, 0)
    assert period_end_text(january) == "2027-02-01T00:00:00Z"
    raised = BudgetPolicy(amount_micros=8_000_000, currency="EUR")
    assert budget_bucket(raised, january) == BucketSpec("budget:2027-01", 8_000_000, 0)
    assert budget_bucket(BudgetPolicy(0, "EUR"), january).capacity == 1
