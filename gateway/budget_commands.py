"""`gateway budgets set|show|clear`: a tenant's monthly budget from the command line (the admin
API manages the same rows)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from gateway.db.budgets import clear_budget, load_budget, set_budget
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.db.tenants import get_tenant, get_tenant_by_name
from gateway.errors import InvalidRequest
from gateway.limits.budget import BudgetPolicy, format_amount
from gateway.settings import Settings


def amount_micros(text: str) -> int:
    """argparse type: a decimal amount exact to the micro-unit, as micro-units."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount") from None
    micros = value * 1_000_000
    if value < 0 or micros % 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need an amount >= 0, exact to 0.000001")
    return int(micros)


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `budgets` and its actions."""
    budgets = commands.add_parser("budgets", help="manage tenant budgets").add_subparsers(
        dest="action", required=True
    )
    set_ = budgets.add_parser("set", help="set a tenant's monthly budget")
    set_.add_argument("tenant", help="tenant id or name")
    set_.add_argument("--amount", type=amount_micros, required=True, help="e.g. 100.00")
    set_.add_argument("--currency", default="EUR")
    set_.add_argument("--soft", action="store_true", help="alert only, never refuse")
    set_.add_argument(
        "--shrink-max-tokens",
        action="store_true",
        help="lower max_tokens to fit what is left instead of refusing",
    )
    set_.add_argument("--min-output-tokens", type=int, default=16)
    set_.add_argument("--thresholds", default="50,80,100", help="alert percentages")
    for action in ("show", "clear"):
        budgets.add_parser(action, help=f"{action} a tenant's budget").add_argument("tenant")


async def run(settings: Settings, args: argparse.Namespace) -> str:
    """Carry out one `budgets` action; the line to print."""
    engine = make_engine(settings)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            tenant = await get_tenant(session, args.tenant) or await get_tenant_by_name(
                session, args.tenant
            )
            if tenant is None:
                raise InvalidRequest(f"No tenant with id or name {args.tenant!r}.")
            if args.action == "set":
                try:
                    thresholds = tuple(int(t) for t in args.thresholds.split(",") if t)
                except ValueError:
                    raise InvalidRequest("--thresholds: comma-separated integers") from None
                policy = BudgetPolicy(
                    amount_micros=args.amount,
                    currency=args.currency.upper(),
                    hard=not args.soft,
                    shrink_max_tokens=args.shrink_max_tokens,
                    min_output_tokens=args.min_output_tokens,
                    thresholds_pct=thresholds,
                )
                await set_budget(session, tenant.id, policy, datetime.now(UTC))
                return f"set budget of {tenant.name}: {_line(policy)}"
            if args.action == "clear":
                cleared = await clear_budget(session, tenant.id)
                return f"cleared budget of {tenant.name}" if cleared else f"{tenant.name}: none"
            policy = await load_budget(session, tenant.id)
            return f"{tenant.name}: {_line(policy) if policy else 'no budget'}"
    finally:
        await engine.dispose()


def _line(policy: BudgetPolicy) -> str:
    kind = "hard" if policy.hard else "soft"
    shrink = " shrink-max-tokens" if policy.shrink_max_tokens else ""
    thresholds = ",".join(str(t) for t in policy.thresholds_pct)
    return (
        f"{format_amount(policy.amount_micros)} {policy.currency}/month {kind}{shrink} "
        f"alerts at {thresholds}%"
    )
