"""`gateway statement TENANT --month YYYY-MM`: a tenant's monthly chargeback statement from the
ledger, as CSV (default) or printable HTML, on standard output or into `--output FILE`.

Deployments are labelled La Plateforme or self-hosted from the routing file (`--config` or
GATEWAY_CONFIG); when it cannot be read the statement is still produced, unlabelled, with a
warning on standard error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.config import ConfigError, load_config
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.db.tenants import get_tenant, get_tenant_by_name
from gateway.errors import NotFound
from gateway.ledger.statements import build_statement, to_csv, to_html
from gateway.settings import Settings


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `statement`."""
    statement = commands.add_parser(
        "statement", help="a tenant's monthly chargeback statement (CSV or HTML)"
    )
    statement.add_argument("tenant", help="tenant id or name")
    statement.add_argument("--month", required=True, help="calendar month (UTC), YYYY-MM")
    statement.add_argument("--format", choices=("csv", "html"), default="csv")
    statement.add_argument("--output", type=Path, help="write to FILE (default: stdout)")
    statement.add_argument("--config", type=Path, help="routing file (YAML): deployment labels")


async def run(settings: Settings, args: argparse.Namespace) -> None:
    """Build, render and write one statement."""
    text = await render_statement(settings, args.tenant, args.month, args.format)
    if args.output is None:
        sys.stdout.write(text)
        return
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)


async def render_statement(settings: Settings, tenant_ref: str, month: str, fmt: str) -> str:
    """The statement of a tenant (id or name) for `month`, rendered as `fmt` (csv or html)."""
    providers = _providers(settings)
    engine = make_engine(settings)
    try:
        async with make_sessionmaker(engine)() as session:
            tenant = await get_tenant(session, tenant_ref) or await get_tenant_by_name(
                session, tenant_ref
            )
            if tenant is None:
                raise NotFound(f"No tenant with id or name {tenant_ref!r}.")
            statement = await build_statement(session, tenant.id, month, providers=providers)
    finally:
        await engine.dispose()
    return to_html(statement) if fmt == "html" else to_csv(statement)


def _providers(settings: Settings) -> dict[str, str]:
    """Deployment name -> provider, from the routing file ({} when it cannot be loaded)."""
    try:
        config = load_config(settings.config)
    except ConfigError as exc:
        print(f"warning: deployments left unlabelled: {exc}", file=sys.stderr)
        return {}
    return {deployment.name: deployment.provider for deployment in config.deployments}
