"""The admin API's wire shapes: pydantic models with unknown fields forbidden (no mass
assignment). Handlers validate with them and `openapi.py` documents them, so both agree."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

from gateway.limits.budget import format_amount

Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]
Residency = Literal["eu", "any"]
Count = Annotated[int, Field(ge=1, le=2_000_000_000)]


class Strict(BaseModel):
    """Base of every request model: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


MICROS = 1_000_000


def amount_of(micros: int) -> Decimal:
    """Micro-units as the decimal the API speaks, without trailing zeros: 120000 -> 0.12."""
    text = format_amount(micros)
    return Decimal(text.rstrip("0").rstrip("."))


def micros_of(amount: Decimal) -> int:
    """A decimal exact to the micro-unit (the schemas allow 6 places) as micro-units."""
    return int(amount * MICROS)


class Page(Strict):
    """`?limit=&cursor=` on every list."""

    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=200)


# --- tenants ---------------------------------------------------------------------------------


class TenantCreate(Strict):
    name: Name
    residency: Residency = "any"
    allowed_models: list[Name] | None = Field(default=None, max_length=1000)
    default_output_tokens: Count | None = None
    status: Literal["active", "suspended"] = "active"


class TenantUpdate(Strict):
    """PATCH: only the fields sent change. `name`, `residency` and `status` may be left out
    but not set to null (documented without null; the handler refuses it with a 422)."""

    name: Name | SkipJsonSchema[None] = None
    residency: Residency | SkipJsonSchema[None] = None
    allowed_models: list[Name] | None = Field(default=None, max_length=1000)
    default_output_tokens: Count | None = None
    status: Literal["active", "suspended"] | SkipJsonSchema[None] = None


class Tenant(BaseModel):
    id: str
    name: str
    residency: str
    allowed_models: list[str] | None
    default_output_tokens: int | None
    status: str
    created_at: datetime


class TenantPage(BaseModel):
    data: list[Tenant]
    next_cursor: str | None


# --- keys ------------------------------------------------------------------------------------


class KeyCreate(Strict):
    name: Name | None = None
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class KeyRotate(Strict):
    grace_seconds: int = Field(
        default=0, ge=0, le=30 * 86_400, description="How long the old key keeps working."
    )
    name: Name | None = None


class Key(BaseModel):
    id: str
    tenant_id: str
    prefix: str
    name: str | None
    status: Literal["active", "expired", "revoked"]
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(Key):
    key: str = Field(description="The key itself: shown once, stored only as a hash.")


class KeyPage(BaseModel):
    data: list[Key]
    next_cursor: str | None


# --- limits ----------------------------------------------------------------------------------


def _burst_needs_rate(burst: int | None, info: ValidationInfo) -> int | None:
    rate = (info.field_name or "").removesuffix("_burst")
    if burst is not None and info.data.get(rate) is None:
        raise ValueError(f"a burst needs {rate} as well")
    return burst


class ModelLimits(Strict):
    rpm: Count | None = None
    tpm: Count | None = None
    rpm_burst: Count | None = None
    tpm_burst: Count | None = None

    check_bursts = field_validator("rpm_burst", "tpm_burst")(_burst_needs_rate)


class Limits(Strict):
    """A tenant's whole limits: PUT replaces every row; an absent figure is unlimited."""

    rpm: Count | None = None
    tpm: Count | None = None
    rpm_burst: Count | None = None
    tpm_burst: Count | None = None
    concurrency: Count | None = None
    models: dict[Name, ModelLimits] = Field(default_factory=dict, max_length=1000)

    check_bursts = field_validator("rpm_burst", "tpm_burst")(_burst_needs_rate)


# --- budgets ---------------------------------------------------------------------------------

Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


def _decimal_doc(whole: str) -> WithJsonSchema:
    """How a request documents a decimal: a string of at most 6 places, up to `whole`
    (pydantic alone would document any string; a JSON number is still accepted)."""
    places = r"(\.\d{1,6})?"
    pattern = rf"^(\d{{1,{len(whole) - 1}}}{places}|{whole}(\.0{{1,6}})?)$"
    return WithJsonSchema({"type": "string", "pattern": pattern}, mode="validation")


Amount = Annotated[
    Decimal, Field(ge=0, le=Decimal("1000000000"), decimal_places=6), _decimal_doc("1000000000")
]


class BudgetBody(Strict):
    amount: Amount
    currency: Currency = "EUR"
    period: Literal["month"] = "month"
    hard: bool = True
    shrink_max_tokens: bool = False
    min_output_tokens: Count = 16
    thresholds_pct: list[Annotated[int, Field(gt=0, le=1000)]] = Field(
        default_factory=lambda: [50, 80, 100], max_length=20
    )


class Budget(BaseModel):
    tenant_id: str
    amount: Decimal
    currency: str
    period: str
    hard: bool
    shrink_max_tokens: bool
    min_output_tokens: int
    thresholds_pct: list[int]
    period_start: datetime
    period_end: datetime
    spent: Decimal = Field(description="Recorded in the ledger this period.")
    remaining: Decimal


# --- prices ----------------------------------------------------------------------------------

PerMillion = Annotated[
    Decimal, Field(ge=0, le=Decimal("1000000"), decimal_places=6), _decimal_doc("1000000")
]


class PriceCreate(Strict):
    model: Name
    deployment: Annotated[str, Field(max_length=64, pattern=r"^[^\x00-\x1f]*$")] = ""
    currency: Currency = "EUR"
    input_per_mtok: PerMillion
    output_per_mtok: PerMillion = Decimal(0)
    effective_from: AwareDatetime = Field(description="With a time zone, e.g. ...T00:00:00Z.")

    @field_validator("effective_from")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        """Stored in UTC: a time whose UTC date falls outside years 1-9999 is refused."""
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("must lie between years 1 and 9999 in UTC") from None


class Price(BaseModel):
    id: int
    model: str
    deployment: str
    currency: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    effective_from: datetime
    created_at: datetime


class PriceQuery(Page):
    model: Name | None = None


class PricePage(BaseModel):
    data: list[Price]
    next_cursor: str | None


# --- usage -----------------------------------------------------------------------------------

GroupBy = Literal["model", "deployment", "day", "month"]


class UsageQuery(Strict):
    tenant_id: str | None = Field(default=None, max_length=36)
    start: datetime | None = Field(
        default=None, description="Inclusive (UTC); default: 30 days ago."
    )
    end: datetime | None = Field(default=None, description="Exclusive (UTC); default: now.")
    group_by: str = Field(
        default="day",
        pattern=r"^(model|deployment|day|month)(,(model|deployment|day|month))*$",
        description="Comma-separated: model, deployment, day, month.",
    )

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        """A time without a zone is UTC."""
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @field_validator("end")
    @classmethod
    def _after_start(cls, end: datetime | None, info: ValidationInfo) -> datetime | None:
        start = info.data.get("start")
        if end is not None and start is not None and end <= start:
            raise ValueError("end must be after start")
        return end

    def dimensions(self) -> list[str]:
        """`group_by` as a list, each dimension once, in the order given."""
        return list(dict.fromkeys(self.group_by.split(",")))


class UsageRow(BaseModel):
    tenant_id: str
    model: str | None = None
    deployment: str | None = None
    day: str | None = None
    month: str | None = None
    currency: str | None = Field(description="None for requests that had no price in force.")
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    cost: Decimal
    unpriced_requests: int


class UsageReport(BaseModel):
    start: datetime
    end: datetime
    group_by: list[str]
    data: list[UsageRow]


# --- audit, admin tokens, reconciliation -----------------------------------------------------


class AuditQuery(Page):
    tenant_id: str | None = Field(default=None, max_length=36)


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    resource_type: str
    resource_id: str
    tenant_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuditPage(BaseModel):
    data: list[AuditEntry]
    next_cursor: str | None


class AdminTokenCreate(Strict):
    name: Name
    role: Literal["admin", "finance"]


class AdminToken(BaseModel):
    id: str
    name: str
    role: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class AdminTokenCreated(AdminToken):
    token: str = Field(description="Shown once, stored only as a hash.")


class AdminTokenPage(BaseModel):
    data: list[AdminToken]
    next_cursor: str | None


class ReconcileQuery(Strict):
    hours: int = Field(default=24, ge=1, le=24 * 31)


class ReconcileHour(BaseModel):
    hour: str
    served: int
    ledger: int
    pending: int
    missing: int


class ReconcileReport(BaseModel):
    complete: bool
    hours: list[ReconcileHour]
