"""Processes for load tests: pinned children, a private Redis, a throwaway Postgres database,
and the gateway itself, set up with the CLI an operator uses (`migrate`, `tenants create`,
`keys create`, `budgets set`, `serve`).

Everything started here is a child of the calling process and is stopped by its pid in
`Processes.stop_all()`; databases and Redis keys created here are removed by the caller's
cleanup (`drop_database`, the private Redis dies with its process).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
MODEL = "mistral-small-latest"
EMBED_MODEL = "mistral-embed"
PRICES = [
    {"model": MODEL, "currency": "EUR", "input_per_mtok": "0.12", "output_per_mtok": "0.5"},
    {"model": EMBED_MODEL, "currency": "EUR", "input_per_mtok": "0.1"},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited early with status {proc.returncode}")
        with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f}s")


def pinned(core: int | str | None, args: Sequence[str]) -> list[str]:
    """`args` under `taskset -c CORE` (unchanged when `core` is None or taskset is missing)."""
    if core is None or shutil.which("taskset") is None:
        return list(args)
    return ["taskset", "-c", str(core), *args]


def clean_up_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so a run that is stopped still reaches its `finally`
    (its children run in their own sessions and would outlive it, its database too)."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def pin_self(core: int | None) -> None:
    """Pin the calling process (the load generator) to one core."""
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and all its descendants (threads included), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for one in [pid, *_descendants(pid)]:
        with suppress(OSError):
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # fields 14 and 15 of stat(5)
    return total


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        with suppress(OSError):
            for task in Path(f"/proc/{parent}/task").iterdir():
                with suppress(OSError):
                    children = [int(c) for c in (task / "children").read_text().split()]
                    found.extend(children)
                    pending.extend(children)
    return found


@dataclass
class Processes:
    """Children started for one run; `stop_all` ends each by its pid (SIGTERM, then SIGKILL)."""

    logdir: Path
    started: list[subprocess.Popen] = field(default_factory=list)

    def start(
        self, name: str, args: Sequence[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen:
        log = (self.logdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            list(args),
            env=dict(env) if env is not None else None,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,  # a Ctrl-C to the bench does not race our own shutdown
        )
        log.close()
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            self.stop(proc)
        self.started.clear()


# --- Redis and Postgres ------------------------------------------------------------------------


def start_private_redis(procs: Processes, core: int | None) -> str | None:
    """A throwaway redis-server on a free port (no persistence); its URL, or None if absent."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = procs.start("redis", pinned(core, args))
    wait_for_port(port, 10, proc)
    return f"redis://127.0.0.1:{port}/0"


def start_upstream(
    procs: Processes, core: int | None, *options: str
) -> tuple[subprocess.Popen, str]:
    """`scenarios/upstream.py` (the canned fast upstream) on a free port, pinned; (process, URL)."""
    port = free_port()
    script = str(Path(__file__).parent / "upstream.py")
    proc = procs.start("upstream", pinned(core, [PYTHON, script, "--port", str(port), *options]))
    wait_for_port(port, 30, proc)
    return proc, f"http://127.0.0.1:{port}"


async def usage_rows(database_url: str) -> int:
    """Rows in a Postgres ledger's `usage_events` (a SQLAlchemy or plain asyncpg URL)."""
    import asyncpg

    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM usage_events"))
    finally:
        await conn.close()


def create_database(admin_url: str) -> str:
    """Create a fresh Postgres database; its SQLAlchemy (asyncpg) URL."""
    import asyncpg

    name = f"bench_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{name}"


def drop_database(admin_url: str, database_url: str) -> None:
    import asyncpg

    name = database_url.rsplit("/", 1)[1]

    async def drop() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        finally:
            await conn.close()

    asyncio.run(drop())


def delete_redis_keys(redis_url: str, prefix: str) -> int:
    from redis import Redis

    client = Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        return len(keys)
    finally:
        client.close()


# --- the gateway -------------------------------------------------------------------------------


def routing_file(path: Path, upstream_url: str, *, health: bool = True) -> Path:
    """One Mistral-style deployment on `upstream_url` (without /v1), priced, retries as shipped."""
    config = {
        "deployments": [
            {
                "name": "bench-upstream",
                "provider": "mistral",
                "base_url": f"{upstream_url}/v1",
                "region": "eu-west",
                "jurisdiction": "eu",
                "models": {MODEL: MODEL, EMBED_MODEL: EMBED_MODEL},
                "health": {"enabled": health},
            }
        ],
        "prices": PRICES,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass(frozen=True)
class TenantSpec:
    """A tenant to create: limits as `gateway tenants create` flags, and a monthly budget."""

    name: str
    rpm: int
    tpm: int
    budget: str = "1000000"  # EUR


def gateway_env(
    workdir: Path,
    config: Path,
    *,
    database_url: str | None = None,
    redis_url: str | None = None,
    redis_prefix: str | None = None,
) -> dict[str, str]:
    """The environment of one gateway: embedded (SQLite) unless the URLs say otherwise. With
    Redis the gateway runs as in production (helm `ledgerWriter.enabled`): it writes no ledger
    itself, a separate `gateway ledger` process does (`start_ledger_writer`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["GATEWAY_CONFIG"] = str(config)
    env["GATEWAY_DATABASE_URL"] = database_url or f"sqlite+aiosqlite:///{workdir / 'gateway.db'}"
    env["GATEWAY_SPOOL_DIR"] = str(workdir / "spool")
    env["GATEWAY_ACCESS_LOG"] = "true"
    if redis_url is not None:
        env["GATEWAY_REDIS_URL"] = redis_url
        env["GATEWAY_REDIS_KEY_PREFIX"] = redis_prefix or f"bench{uuid.uuid4().hex[:8]}:"
        env["GATEWAY_LEDGER_WRITER"] = "false"
    return env


def start_ledger_writer(
    procs: Processes, name: str, env: Mapping[str, str], core: int | None
) -> subprocess.Popen:
    """`gateway ledger`, the standalone writer of the usage stream into Postgres, pinned."""
    return procs.start(
        name,
        pinned(core, [PYTHON, "-m", "gateway", "ledger", "--config", env["GATEWAY_CONFIG"]]),
        env,
    )


def cli(env: Mapping[str, str], *args: str) -> str:
    """`python -m gateway ARGS`; its standard output (raises with stderr on failure)."""
    done = subprocess.run(
        [PYTHON, "-m", "gateway", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"gateway {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done.stdout


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1].strip()


def bootstrap(env: Mapping[str, str], tenants: Sequence[TenantSpec]) -> dict[str, str]:
    """Migrate, then create each tenant (limits, budget) and one key: {tenant name: key}."""
    cli(env, "migrate")
    keys = {}
    for spec in tenants:
        cli(env, "tenants", "create", spec.name, "--rpm", str(spec.rpm), "--tpm", str(spec.tpm))
        cli(env, "budgets", "set", spec.name, "--amount", spec.budget, "--currency", "EUR")
        keys[spec.name] = last_line(cli(env, "keys", "create", spec.name, "--name", "load"))
    return keys


def start_gateway(
    procs: Processes,
    name: str,
    env: Mapping[str, str],
    core: int | str | None,
    *,
    workers: int = 1,
) -> tuple[subprocess.Popen, str]:
    """`gateway serve` on a free port, pinned (`core` may be a taskset list such as "0,1");
    (process, base URL) once it listens."""
    port = free_port()
    command = [PYTHON, "-m", "gateway", "serve", "--port", str(port), "--workers", str(workers)]
    proc = procs.start(name, pinned(core, command), env)
    wait_for_port(port, 60, proc)
    return proc, f"http://127.0.0.1:{port}"


@dataclass
class RedisModeStack:
    """What `redis_mode_stack` set up: the gateway's environment and a tenant's key."""

    env: dict[str, str]
    key: str


@contextmanager
def redis_mode_stack(
    procs: Processes,
    workdir: Path,
    admin_url: str,
    tenant: TenantSpec,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    core: int | None = None,
) -> Iterator[RedisModeStack]:
    """Everything a Redis-mode gateway needs, as in production and `bench.py`: the canned
    upstream, a private Redis, a Postgres database of its own, the schema, one tenant with its
    budget and key, and the standalone ledger writer; the helpers pinned to `core`. On exit
    every process in `procs` is stopped and the database dropped. Exits without redis-server."""
    _, upstream_url = start_upstream(
        procs, core, "--prompt-tokens", str(prompt_tokens),
        "--completion-tokens", str(completion_tokens),
    )  # fmt: skip
    redis_url = start_private_redis(procs, core)
    if redis_url is None:
        raise SystemExit("no redis-server found (apt-get install redis-server)")
    database_url = create_database(admin_url)
    try:
        (workdir / "gateway").mkdir(exist_ok=True)
        env = gateway_env(
            workdir / "gateway",
            routing_file(workdir / "routing.yaml", upstream_url),
            database_url=database_url,
            redis_url=redis_url,
            redis_prefix="stack:",
        )
        key = bootstrap(env, [tenant])[tenant.name]
        start_ledger_writer(procs, "ledger-writer", env, core)
        yield RedisModeStack(env, key)
    finally:
        procs.stop_all()  # the writer and the gateways hold connections to the database
        drop_database(admin_url, database_url)
