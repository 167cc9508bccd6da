"""The `gateway` command: serve, migrate, bootstrap tenants and keys, run the simulator, demo.

Output contract (scripts rely on it): `gateway keys create TENANT` prints the new key alone on
the last line of standard output; `gateway tenants create NAME` prints the tenant id on its
last line; `gateway limits set` prints one summary line, `gateway limits show` one line per
limits row. Errors go to standard error with exit status 2 (bad input) or 1 (failure).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import budget_commands, statement_commands
from gateway.config import ConfigError, GatewayConfig, SimulatorConfig, load_config
from gateway.errors import GatewayError
from gateway.ledger.commands import run_ledger_writer, run_reconcile
from gateway.settings import Settings, enable_multiprocess_metrics, export_for_workers

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from gateway.db.tables import Tenant


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    for name in ("host", "port", "workers", "config"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)  # type: ignore[arg-type]


def _load(settings: Settings) -> GatewayConfig:
    try:
        return load_config(settings.config)
    except ConfigError as exc:
        print(f"error: invalid routing file\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None


# --- serve -------------------------------------------------------------------------------------


def _wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.1)
    return False


def _start_simulator(sim: SimulatorConfig) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "gateway", "simulate",
        "--host", sim.host, "--port", str(sim.port), "--style", sim.style,
        "--ttft-ms", str(sim.ttft_ms), "--token-delay-ms", str(sim.token_delay_ms),
    ]  # fmt: skip
    process = subprocess.Popen(command)  # noqa: S603 (our own interpreter and module)
    if not _wait_for_port(sim.host, sim.port, 30):
        process.terminate()
        raise SystemExit(f"error: the simulated upstream did not start on {sim.host}:{sim.port}")
    print(f"SIMULATED upstream (not a real model) on http://{sim.host}:{sim.port}", file=sys.stderr)
    return process


def serve(settings: Settings, config: GatewayConfig) -> None:
    """Run the gateway (and the simulator, when the routing file asks for it) until stopped."""
    import uvicorn

    simulator = _start_simulator(config.simulator) if config.simulator else None
    if settings.workers > 1:
        enable_multiprocess_metrics()
    export_for_workers(settings)
    try:
        uvicorn.run(
            "gateway.app:create_app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            loop="uvloop" if _has_uvloop() else "asyncio",
            http="gateway.web.server_protocol:DeadlineHttpToolsProtocol",
            log_level=settings.log_level.lower(),
            access_log=False,
            timeout_graceful_shutdown=25,
            # Longer than load balancers' idle timeouts (60 s): the client side closes first,
            # so a client never reuses a connection the gateway has just dropped.
            timeout_keep_alive=75,
        )
    finally:
        if simulator is not None:
            simulator.terminate()
            simulator.wait(10)


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


# --- database commands -------------------------------------------------------------------------


def migrate(settings: Settings) -> None:
    """Bring the database schema to the newest version."""
    from gateway.db import migrate as migrations

    migrations.upgrade(settings.database_url)
    print(f"database at head: {_safe_url(settings.database_url)}")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


async def _create_tenant(
    settings: Settings,
    name: str,
    residency: str,
    allowed_models: list[str] | None,
    *,
    figures: dict[str, int | None] | None = None,
    default_output_tokens: int | None = None,
) -> str:
    """Create a tenant and, when any figure is given, its default limits row, in one commit."""
    from gateway.db import tenants
    from gateway.db.engine import make_engine, make_sessionmaker

    engine = make_engine(settings)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            now = datetime.now(UTC)
            tenant = await tenants.create_tenant(
                session,
                name=name,
                residency=residency,
                allowed_models=allowed_models,
                now=now,
            )
            tenant.default_output_tokens = default_output_tokens
            if figures and any(value is not None for value in figures.values()):
                await _store_limits(session, tenant.id, None, figures, now=now)
            return tenant.id
    finally:
        await engine.dispose()


async def _set_limits(
    settings: Settings, tenant_ref: str, model: str | None, figures: dict[str, int | None]
) -> str:
    """Replace one limits row of a tenant; the row as stored, on one line."""
    from gateway.db.engine import make_engine, make_sessionmaker
    from gateway.errors import InvalidRequest

    if all(value is None for value in figures.values()):
        raise InvalidRequest(
            "Nothing to set: pass at least one of --rpm, --tpm, --rpm-burst, "
            "--tpm-burst, --concurrency."
        )
    engine = make_engine(settings)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            tenant = await _find_tenant(session, tenant_ref)
            if tenant is None:
                raise InvalidRequest(f"No tenant with id or name {tenant_ref!r}.")
            await _store_limits(session, tenant.id, model, figures, now=datetime.now(UTC))
            # The row now holds exactly these figures (set replaces the whole row).
            return f"set limits of {tenant.name}: {_limits_line(model, figures)}"
    finally:
        await engine.dispose()


async def _store_limits(
    session: AsyncSession,
    tenant_id: str,
    model: str | None,
    figures: dict[str, int | None],
    *,
    now: datetime,
) -> None:
    from gateway.db import limits

    await limits.set_limits(
        session,
        tenant_id,
        model=model,
        rpm=figures["rpm"],
        tpm=figures["tpm"],
        rpm_burst=figures["rpm_burst"],
        tpm_burst=figures["tpm_burst"],
        concurrency=figures["concurrency"],
        now=now,
    )


async def _show_limits(settings: Settings, tenant_ref: str) -> list[str]:
    from gateway.db import limits
    from gateway.db.engine import make_engine, make_sessionmaker
    from gateway.errors import InvalidRequest

    engine = make_engine(settings)
    try:
        async with make_sessionmaker(engine)() as session:
            tenant = await _find_tenant(session, tenant_ref)
            if tenant is None:
                raise InvalidRequest(f"No tenant with id or name {tenant_ref!r}.")
            lines = [
                _limits_line(limits.model_label(row), _figures(row))
                for row in await limits.list_limits(session, tenant.id)
            ]
            return lines or [f"{tenant.name}: no limits (unlimited)"]
    finally:
        await engine.dispose()


def _limits_line(model: str | None, figures: dict[str, int | None]) -> str:
    """`default: rpm=60 tpm=1000 concurrency=4` or `model m1: rpm=unlimited tpm=50`."""
    parts = [f"rpm={_figure(figures['rpm'])}", f"tpm={_figure(figures['tpm'])}"]
    # An unset burst means "the per-minute figure", not unlimited: show it only when set.
    parts += [f"{name}={figures[name]}" for name in ("rpm_burst", "tpm_burst") if figures[name]]
    if model is None:
        parts.append(f"concurrency={_figure(figures['concurrency'])}")
    scope = "default" if model is None else f"model {model}"
    return f"{scope}: {' '.join(parts)}"


def _figure(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


async def _create_key(
    settings: Settings, tenant_ref: str, name: str | None, expires_in_days: float | None
) -> str:
    from gateway.auth.keys import display_prefix, generate_key, hash_key
    from gateway.db import keys
    from gateway.db.engine import make_engine, make_sessionmaker
    from gateway.errors import InvalidRequest

    engine = make_engine(settings)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            tenant = await _find_tenant(session, tenant_ref)
            if tenant is None:
                raise InvalidRequest(f"No tenant with id or name {tenant_ref!r}.")
            key = generate_key()
            now = datetime.now(UTC)
            await keys.insert_key(
                session,
                tenant_id=tenant.id,
                key_hash=hash_key(key, settings.key_pepper.get_secret_value().encode()),
                prefix=display_prefix(key),
                name=name,
                expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None,
                now=now,
            )
            return key
    finally:
        await engine.dispose()


async def _list_keys(settings: Settings, tenant_ref: str) -> list[str]:
    from gateway.db import keys
    from gateway.db.engine import make_engine, make_sessionmaker
    from gateway.errors import InvalidRequest

    engine = make_engine(settings)
    try:
        async with make_sessionmaker(engine)() as session:
            tenant = await _find_tenant(session, tenant_ref)
            if tenant is None:
                raise InvalidRequest(f"No tenant with id or name {tenant_ref!r}.")
            return [
                f"{key.id}  {key.prefix}...  {'revoked' if key.revoked_at else 'active'}"
                f"  {key.name or '-'}"
                for key in await keys.list_keys(session, tenant.id)
            ]
    finally:
        await engine.dispose()


async def _find_tenant(session: AsyncSession, tenant_ref: str) -> Tenant | None:
    from gateway.db import tenants

    tenant = await tenants.get_tenant(session, tenant_ref)
    return tenant or await tenants.get_tenant_by_name(session, tenant_ref)


async def _revoke_key(settings: Settings, key_id: str) -> bool:
    from gateway.db import keys
    from gateway.db.engine import make_engine, make_sessionmaker

    engine = make_engine(settings)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            return await keys.revoke_key(session, key_id, now=datetime.now(UTC))
    finally:
        await engine.dispose()


# --- simulate, demo ----------------------------------------------------------------------------


def simulate(args: argparse.Namespace) -> None:
    """Run the SIMULATED upstream (for demos, tests and load tests)."""
    from gateway.upstream.simulated import SimulatorOptions, run_simulator

    options = SimulatorOptions(
        style=args.style,
        ttft_ms=args.ttft_ms,
        token_delay_ms=args.token_delay_ms,
        output_tokens=args.output_tokens,
        fail_rate=args.fail_rate,
        fail_status=args.fail_status,
    )
    run_simulator(args.host, args.port, options)


def demo(settings: Settings, config: GatewayConfig) -> None:
    """Migrate, make a demo tenant and key, print how to call, then serve."""
    migrate(settings)
    tenant = "demo"
    with suppress(GatewayError):  # already there from an earlier run
        asyncio.run(_create_tenant(settings, tenant, "any", None))
    key = asyncio.run(_create_key(settings, tenant, "demo", None))
    base = f"http://{settings.host}:{settings.port}"
    model = config.public_models()[0]
    print(
        f"""
Gateway on {base} (routing file: {settings.config})
Demo tenant key (shown once): {key}

Try it:
  curl -s {base}/v1/chat/completions \\
    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  python -c "from openai import OpenAI; c = OpenAI(base_url='{base}/v1', api_key='{key}'); \\
print(c.chat.completions.create(model='{model}', messages=[{{'role': 'user', 'content': 'Hi'}}]))"
""",
        flush=True,
    )
    serve(settings, config)


# --- argument parsing --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    for name, help_text in (("serve", "run the gateway"), ("demo", "set up and run the demo")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--host")
        command.add_argument("--port", type=int)
        command.add_argument("--workers", type=int)
        command.add_argument("--config", type=Path, help="routing file (YAML)")

    commands.add_parser("migrate", help="upgrade the database schema to the newest version")
    budget_commands.add_parser(commands)
    statement_commands.add_parser(commands)
    ledger = commands.add_parser("ledger", help="run a ledger writer (production mode)")
    ledger.add_argument("--config", type=Path, help="routing file (YAML): its list prices")
    reconcile = commands.add_parser(
        "reconcile", help="served requests per hour vs ledger rows; exit 1 if any are missing"
    )
    reconcile.add_argument("--hours", type=int, default=24, help="how far back (default 24)")

    tenants = commands.add_parser("tenants", help="manage tenants").add_subparsers(
        dest="action", required=True
    )
    create_tenant = tenants.add_parser("create", help="create a tenant; prints its id last")
    create_tenant.add_argument("name")
    create_tenant.add_argument("--residency", choices=("eu", "any"), default="any")
    create_tenant.add_argument(
        "--models", help="comma-separated public models the tenant may use (default: all)"
    )
    _add_limit_options(create_tenant)
    create_tenant.add_argument(
        "--default-output-tokens",
        type=_positive_int,
        help="output tokens reserved when a request sets no max_tokens (default: routing file)",
    )

    limits = commands.add_parser("limits", help="manage tenant rate limits").add_subparsers(
        dest="action", required=True
    )
    set_limits = limits.add_parser(
        "set", help="replace the tenant's default limits, or one model's (omitted = unlimited)"
    )
    set_limits.add_argument("tenant", help="tenant id or name")
    set_limits.add_argument("--model", help="public model name (default: the tenant's defaults)")
    _add_limit_options(set_limits)
    show_limits = limits.add_parser("show", help="list a tenant's limits, one line per row")
    show_limits.add_argument("tenant", help="tenant id or name")

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="action", required=True
    )
    create_key = keys.add_parser("create", help="create a key; prints it alone on the last line")
    create_key.add_argument("tenant", help="tenant id or name")
    create_key.add_argument("--name")
    create_key.add_argument("--expires-in-days", type=float)
    list_keys = keys.add_parser("list", help="list a tenant's keys: id, prefix, status, name")
    list_keys.add_argument("tenant", help="tenant id or name")
    revoke_key = keys.add_parser("revoke", help="revoke a key by its id")
    revoke_key.add_argument("key_id")

    sim = commands.add_parser("simulate", help="run the SIMULATED upstream")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8911)
    sim.add_argument("--style", choices=("mistral", "vllm", "openai"), default="mistral")
    sim.add_argument("--ttft-ms", type=float, default=0.0)
    sim.add_argument("--token-delay-ms", type=float, default=0.0)
    sim.add_argument("--output-tokens", type=int, default=16)
    sim.add_argument("--fail-rate", type=float, default=0.0)
    sim.add_argument("--fail-status", type=int, default=503)
    return parser


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a bad value exits 2 with argparse's usage message)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {value}")
    return value


def _add_limit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rpm", type=_positive_int, help="requests per minute")
    parser.add_argument("--tpm", type=_positive_int, help="tokens per minute")
    parser.add_argument("--rpm-burst", type=_positive_int, help="RPM bucket size (default: rpm)")
    parser.add_argument("--tpm-burst", type=_positive_int, help="TPM bucket size (default: tpm)")
    parser.add_argument(
        "--concurrency", type=_positive_int, help="requests in flight (tenant defaults only)"
    )


def _figures(source: object) -> dict[str, int | None]:
    """The limit figures of parsed options or of a stored `limits` row, by column name."""
    from gateway.db.tables import LIMIT_COLUMNS

    return {name: getattr(source, name, None) for name in LIMIT_COLUMNS}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `gateway` console script and `python -m gateway`."""
    args = _parser().parse_args(argv)
    try:
        _dispatch(args)
    except GatewayError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None


def _dispatch(args: argparse.Namespace) -> None:
    if args.command == "simulate":
        simulate(args)
        return
    settings = _settings(args)
    if args.command == "serve":
        serve(settings, _load(settings))
    elif args.command == "demo":
        demo(settings, _load(settings))
    elif args.command == "migrate":
        migrate(settings)
    elif args.command == "budgets":
        print(asyncio.run(budget_commands.run(settings, args)))
    elif args.command == "statement":
        asyncio.run(statement_commands.run(settings, args))
    elif args.command == "ledger":
        asyncio.run(run_ledger_writer(settings, _load(settings)))
    elif args.command == "reconcile":
        lines, complete = asyncio.run(run_reconcile(settings, args.hours))
        print("\n".join(lines))
        if not complete:
            raise SystemExit(1)
    elif args.command == "tenants":
        models = [m.strip() for m in args.models.split(",")] if args.models else None
        creation = _create_tenant(
            settings,
            args.name,
            args.residency,
            models,
            figures=_figures(args),
            default_output_tokens=args.default_output_tokens,
        )
        print(asyncio.run(creation))
    elif args.command == "limits" and args.action == "set":
        print(asyncio.run(_set_limits(settings, args.tenant, args.model, _figures(args))))
    elif args.command == "limits" and args.action == "show":
        for line in asyncio.run(_show_limits(settings, args.tenant)):
            print(line)
    elif args.command == "keys" and args.action == "create":
        key = asyncio.run(_create_key(settings, args.tenant, args.name, args.expires_in_days))
        print(key)
    elif args.command == "keys" and args.action == "list":
        for line in asyncio.run(_list_keys(settings, args.tenant)):
            print(line)
    elif args.command == "keys" and args.action == "revoke":
        if not asyncio.run(_revoke_key(settings, args.key_id)):
            print(f"error: no active key with id {args.key_id!r}", file=sys.stderr)
            raise SystemExit(1)
        print(f"revoked {args.key_id}")
