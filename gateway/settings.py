"""Process settings: the one module that reads the environment.

Every value has a `GATEWAY_` variable (nested values use `__`). `__main__`/the CLI builds one
`Settings` and passes it down; tests construct `Settings(...)` directly instead of patching env.
Secrets are `SecretStr`, so they never show up in a repr or a log line.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEMO_CONFIG_PATH = Path(__file__).with_name("demo.yaml")


class Settings(BaseSettings):
    """Process-wide settings (URLs, secrets, sizes, paths)."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    database_url: str = Field(
        default="sqlite+aiosqlite:///gateway.db",
        description="SQLAlchemy async URL: sqlite+aiosqlite:///file.db or postgresql+asyncpg://...",
    )
    redis_url: str | None = Field(
        default=None, description="Redis URL; unset means in-process backends (embedded mode)."
    )
    redis_key_prefix: str = Field(default="gw:", description="Prefix of every Redis key we own.")
    redis_cluster: bool = Field(default=False, description="The Redis URL is a Redis Cluster.")
    redis_timeout_s: float = Field(
        default=0.05,
        gt=0,
        description="Cap on each Redis call; a slow Redis never stalls requests.",
    )
    limiter_failure_mode: Literal["open", "closed"] = Field(
        default="open",
        description="Redis unreachable: `open` admits against this replica's share of each limit, "
        "`closed` refuses with 503.",
    )
    replicas: int = Field(
        default=1, ge=1, description="Gateway replicas sharing the limits (sizes the local share)."
    )
    default_output_tokens: int = Field(
        default=1024, gt=0, description="Output tokens reserved when a request sets no max_tokens."
    )
    config: Path = Field(default=DEMO_CONFIG_PATH, description="The routing file (YAML).")
    admin_token: SecretStr | None = Field(
        default=None, description="Bootstrap admin token; the admin API is closed without one."
    )
    key_pepper: SecretStr = Field(
        default=SecretStr(""),
        description="Server secret mixed into API-key hashes (HMAC-SHA-256). Set it in production.",
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024, gt=0, description="Request body cap (413)."
    )
    request_head_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A connection must deliver a request's whole head (request line and "
        "headers) this long after it opens or after its previous response; else it is closed.",
    )
    request_body_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A request's whole body must arrive this long after its head (408).",
    )
    admin_auth_max_failures: int = Field(
        default=20, gt=0, description="Failed admin logins per address per window before 429."
    )
    admin_auth_window_s: float = Field(
        default=60.0, gt=0, description="The window of `admin_auth_max_failures`."
    )
    auth_cache_ttl_s: float = Field(
        default=2.0, ge=0, description="How long a key→tenant lookup is trusted before re-reading."
    )
    spool_dir: Path = Field(
        default=Path(".gateway-spool"),
        description="Where usage records wait when the journal (Redis) or the database is down.",
    )
    ledger_writer: bool = Field(
        default=True,
        description="Run a ledger writer in each gateway process (else run `gateway ledger`).",
    )
    ledger_batch_size: int = Field(default=500, gt=0, description="Rows per ledger transaction.")
    ledger_reclaim_idle_s: float = Field(
        default=30.0,
        gt=0,
        description="A writer's unacknowledged batch left idle this long is taken over by "
        "another writer (the first is presumed dead).",
    )
    upstream_client: Literal["http1", "pyreqwest", "aiohttp"] = Field(
        default="http1",
        description="The upstream HTTP client. `http1` (ours, asyncio + httptools) is the "
        "cheapest in CPU per request and aborts an abandoned request at once; `aiohttp` costs "
        "about twice the CPU; `pyreqwest` (Rust) is cheap but cannot abort a request whose "
        "client left before the upstream's headers (see gateway/upstream/client.py).",
    )
    price_refresh_s: float = Field(
        default=30.0, gt=0, description="How often the in-memory price book is reloaded."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    access_log: bool = Field(
        default=True, description="One JSON line per request (ids, model, status, latency)."
    )
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = Field(default=1, ge=1)


def export_for_workers(settings: Settings) -> None:
    """Write settings back to the environment so `uvicorn --workers` children rebuild them."""
    for name, value in settings.model_dump(exclude_none=True).items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        os.environ[f"GATEWAY_{name.upper()}"] = str(value)


def read_secret_env(name: str) -> SecretStr | None:
    """The secret held by environment variable `name` (named in the routing file), if set."""
    value = os.environ.get(name)
    return SecretStr(value) if value else None


def prometheus_multiproc_dir() -> str | None:
    """Where prometheus-client keeps multi-process metrics (set by `serve` for N workers)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def enable_multiprocess_metrics() -> None:
    """Give prometheus-client a fresh shared directory, for `serve --workers N` (N > 1).
    Must run before the workers import prometheus-client."""
    if prometheus_multiproc_dir() is None:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")
