"""Real processes and a real load for the ledger durability tests (test_ledger_durability.py).

- `PrivatePostgres`: a throwaway Postgres cluster on a free port (initdb in a temp dir, run as
  the `postgres` user when we are root, as tests/services.py does), that a test can stop
  (`pg_ctl stop -m fast`) and start again on the same port. The shared server on :5432 is
  never touched.
- `sim_server`, `ledger_writer`: the simulated upstream and `gateway ledger` as processes.
- `ledger_routing`: a routing file with one Mistral-style deployment and EUR list prices.
- `Load` / `running_load`: the load generator: `concurrency` clients (httpx.AsyncClient, plus
  the openai SDK for part of the traffic) sending a mix of chat, streamed chat, embeddings and
  FIM, either a fixed plan or until stopped (in a thread with its own event loop, so the test
  can stop and start servers meanwhile). Each answer the client got is kept as a `Served`
  with the gateway's `x-request-id` and the usage the client saw.
- `Ledger`: what the database and the usage stream hold afterwards (rows, rollup totals,
  backlog, served counts), read with plain drivers rather than the gateway's own code.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import psycopg
import redis as redis_sync
import yaml

from gateway.ledger.redis_stream import GROUP, served_key, stream_key
from tests.e2e.stack import ROOT, process
from tests.services import PostgresServer, _pg_ctl, free_port

# EUR list prices in micro-units per million tokens, and how the routing file spells them.
PRICES: dict[str, tuple[int, int]] = {
    "mistral-small-latest": (120_000, 500_000),
    "codestral-latest": (260_000, 790_000),
    "mistral-embed": (100_000, 0),
    "mistral-large-latest": (2_000_000, 6_000_000),
}
FAULTY_MODEL = "mistral-large-latest"  # only the requests meant to take a queued fault use it
CHAT = [{"role": "user", "content": "Count every token of this, exactly once, please."}]


def cost_of(model: str, prompt_tokens: int, completion_tokens: int) -> int:
    """The issue's rule, computed here independently: half up to a whole micro-unit."""
    price_in, price_out = PRICES[model]
    return (prompt_tokens * price_in + completion_tokens * price_out + 500_000) // 10**6


TIMEOUTS = {"connect_s": 2, "read_s": 10, "total_s": 30}


def ledger_routing(path: Path, sim_url: str, timeouts: Mapping[str, float] | None = None) -> Path:
    """One Mistral-style deployment, one attempt per request, and list prices for its models
    (`timeouts` replaces the deployment's TIMEOUTS)."""
    config = {
        "routing": {"retries": {"max_attempts": 1}, "ejection": {"consecutive_failures": 100_000}},
        "deployments": [
            {
                "name": "sim",
                "provider": "mistral",
                "base_url": f"{sim_url}/v1",
                "region": "eu-west",
                "jurisdiction": "eu",
                "models": {model: model for model in PRICES},
                "timeouts": dict(timeouts or TIMEOUTS),
                "health": {"enabled": False},
            }
        ],
        "prices": [
            {
                "model": model,
                "currency": "EUR",
                "input_per_mtok": str(price_in / 10**6),
                "output_per_mtok": str(price_out / 10**6),
            }
            for model, (price_in, price_out) in PRICES.items()
        ],
    }
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def sim_server(
    tmp: Path, env: Mapping[str, str], *, token_delay_ms: float, output_tokens: int
) -> Iterator[str]:
    """A Mistral-style simulated upstream process; yields its base URL (without /v1)."""
    port = free_port()
    args = [
        sys.executable, "-m", "gateway", "simulate", "--port", str(port), "--style", "mistral",
        "--token-delay-ms", str(token_delay_ms), "--output-tokens", str(output_tokens),
    ]  # fmt: skip
    with process(args, env, port, tmp / f"sim-{port}.log"):
        yield f"http://127.0.0.1:{port}"


def sim_request_ids(sim_url: str) -> set[str]:
    """The gateway request ids the simulator received since its last reset."""
    log = httpx.get(f"{sim_url}/_sim/requests", timeout=10).json()
    assert len(log) < 10_000, "the simulator's request log is full: the count would be short"
    return {entry["request_id"] for entry in log if entry["request_id"]}


@contextmanager
def ledger_writer(env: Mapping[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """`gateway ledger` (a standalone writer), yielded once it says it runs."""
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "ledger"],
            env=dict(env),
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        try:
            deadline = time.monotonic() + 30
            while b"ledger writer running" not in log.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gateway ledger did not start: {log.read_text()}")
                time.sleep(0.05)
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


# --- a Postgres the test may stop --------------------------------------------------------------


class PrivatePostgres:
    """A Postgres cluster of our own on 127.0.0.1:`port`, stopped and started at will."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data = workdir / "data"
        self.port = free_port()
        self.server = PostgresServer("127.0.0.1", self.port)
        self._pg_ctl = [_pg_ctl()]
        if os.geteuid() == 0:  # Postgres refuses to run as root (as in tests/services.py)
            self._pg_ctl = ["runuser", "-u", "postgres", "--", *self._pg_ctl]
            shutil.chown(workdir, "postgres")

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._pg_ctl, *args], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl {args[0]} failed: {done.stdout}{done.stderr}")

    def init(self) -> None:
        """initdb with trust auth for the `postgres` user."""
        self._run("initdb", "-D", str(self.data), "-o", "--auth=trust --username=postgres -N")

    def start(self) -> None:
        """Start and wait until it accepts connections. (fsync off: these tests stop the
        server cleanly, they never crash the machine.)"""
        options = f"-p {self.port} -h 127.0.0.1 -k {self.workdir} -c fsync=off"
        log = str(self.workdir / "pg.log")
        self._run("start", "-w", "-t", "60", "-D", str(self.data), "-l", log, "-o", options)

    def stop(self) -> None:
        """`pg_ctl stop -m fast`: open connections are cut, the server is gone at return."""
        self._run("stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.data))


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A running private Postgres, stopped and deleted on exit."""
    pg = PrivatePostgres(Path(tempfile.mkdtemp(prefix="gw-ledger-pg-")))
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        with suppress(RuntimeError):
            pg.stop()
        shutil.rmtree(pg.workdir, ignore_errors=True)


# --- the load ----------------------------------------------------------------------------------

KINDS = ("chat", "stream", "sdk-chat", "sdk-stream", "embed", "fim")
STREAMED = ("stream", "faulty", "sdk-stream")


@dataclass
class Served:
    """One answer a client received in full."""

    request_id: str
    kind: str
    model: str
    status: int
    usage: dict[str, Any] | None  # what the upstream reported, as relayed
    events: int = 0  # content events of a stream (before an error event, if any)
    cut: bool = False  # the stream ended with the gateway's error event
    error_code: str | None = None
    done_mono: float = 0.0
    sent_mono: float = 0.0
    limit: int | None = None  # x-ratelimit-limit-requests: who admitted (Redis or a local share)
    done: bool = False  # a stream: `data: [DONE]` arrived
    retry_after_ms: int | None = None

    @property
    def complete(self) -> bool:
        """A 200 the client received in full: a whole body, or a stream through [DONE]."""
        if self.status != 200:
            return False
        return self.done if self.kind in STREAMED else not self.cut

    @property
    def latency_s(self) -> float:
        return self.done_mono - self.sent_mono


@dataclass
class LoadResult:
    served: list[Served] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # no answer (connection refused, reset)

    def ids(self) -> set[str]:
        return {s.request_id for s in self.served}


def _stream_body(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": CHAT,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


class Load:
    """`concurrency` clients sending requests of the kinds drawn from a plan."""

    def __init__(
        self, base_url: str, key: str, *, concurrency: int = 16, max_pause_s: float = 0.0
    ) -> None:
        self.base_url = base_url
        self.key = key
        self.concurrency = concurrency
        # After a 429, wait as its retry-after-ms says (as the SDKs do), at most this long:
        # rate-limited clients then don't spin the two cores.
        self.max_pause_s = max_pause_s
        self.result = LoadResult()

    async def run(self, plan: Iterable[str], stop: threading.Event | None = None) -> LoadResult:
        """Send one request per item of `plan` (until `stop` is set), then return."""
        kinds = iter(plan)
        headers = {"authorization": f"Bearer {self.key}"}
        limits = httpx.Limits(max_connections=self.concurrency)
        async with (
            httpx.AsyncClient(
                base_url=self.base_url, headers=headers, timeout=60, limits=limits
            ) as http,
            openai.AsyncOpenAI(
                api_key=self.key, base_url=f"{self.base_url}/v1", max_retries=0, timeout=60
            ) as sdk,
        ):

            async def client() -> None:
                for kind in kinds:
                    if stop is not None and stop.is_set():
                        return
                    sent = time.monotonic()
                    try:
                        served = await self._send(http, sdk, kind)
                    except openai.APIStatusError as exc:  # an answer all the same
                        served = _whole(kind, "", exc.response)
                    except (httpx.TransportError, openai.APIConnectionError) as exc:
                        self.result.failures.append(f"{kind}: {type(exc).__name__}")
                        if stop is not None:
                            await asyncio.sleep(0.05)  # the server is away: don't spin
                        continue
                    served.sent_mono = sent
                    self.result.served.append(served)
                    if served.status == 429 and self.max_pause_s:
                        await asyncio.sleep(min(self.max_pause_s, _retry_after_s(served)))

            await asyncio.gather(*(client() for _ in range(self.concurrency)))
        return self.result

    async def _send(self, http: httpx.AsyncClient, sdk: openai.AsyncOpenAI, kind: str) -> Served:
        if kind == "chat":
            body = {"model": "mistral-small-latest", "messages": CHAT}
            response = await http.post("/v1/chat/completions", json=body)
            return _whole(kind, body["model"], response)
        if kind == "fim":
            body = {"model": "codestral-latest", "prompt": "def add(a, b):", "suffix": "return c"}
            response = await http.post("/v1/fim/completions", json=body)
            return _whole(kind, body["model"], response)
        if kind in ("stream", "faulty"):
            model = FAULTY_MODEL if kind == "faulty" else "mistral-small-latest"
            async with http.stream(
                "POST", "/v1/chat/completions", json=_stream_body(model)
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    return _whole(kind, model, response)
                return await _streamed(kind, model, response)
        if kind == "sdk-chat":
            raw = await sdk.chat.completions.with_raw_response.create(
                model="mistral-small-latest", messages=CHAT
            )
            usage = raw.parse().usage
            return Served(
                raw.headers["x-request-id"],
                kind,
                "mistral-small-latest",
                raw.status_code,
                usage.model_dump() if usage else None,
                done_mono=time.monotonic(),
                limit=_limit(raw.headers),
            )
        if kind == "sdk-stream":
            raw = await sdk.chat.completions.with_raw_response.create(
                model="mistral-small-latest",
                messages=CHAT,
                stream=True,
                stream_options={"include_usage": True},
            )
            usage, events = None, 0
            async for chunk in raw.parse():
                if chunk.usage is not None:
                    usage = chunk.usage.model_dump()
                events += 1
            return Served(
                raw.headers["x-request-id"],
                kind,
                "mistral-small-latest",
                raw.status_code,
                usage,
                events,
                done_mono=time.monotonic(),
                limit=_limit(raw.headers),
                done=True,  # the SDK's iterator ends at [DONE] and raises on an error event
            )
        if kind == "embed":
            raw = await sdk.embeddings.with_raw_response.create(
                model="mistral-embed", input=["ledger rows", "exactly once"]
            )
            return Served(
                raw.headers["x-request-id"],
                kind,
                "mistral-embed",
                raw.status_code,
                raw.parse().usage.model_dump(),
                done_mono=time.monotonic(),
                limit=_limit(raw.headers),
            )
        raise ValueError(kind)


def _limit(headers: Mapping[str, str]) -> int | None:
    value = headers.get("x-ratelimit-limit-requests")
    return int(value) if value is not None else None


def _retry_after_s(served: Served) -> float:
    return served.retry_after_ms / 1000 if served.retry_after_ms is not None else 0.05


def _whole(kind: str, model: str, response: httpx.Response) -> Served:
    body = orjson.loads(response.content) if response.content else {}
    error = body.get("error") if isinstance(body, dict) else None
    retry_after = response.headers.get("retry-after-ms")
    return Served(
        response.headers["x-request-id"],
        kind,
        model,
        response.status_code,
        body.get("usage") if response.status_code == 200 else None,
        error_code=error.get("code") if isinstance(error, dict) else None,
        done_mono=time.monotonic(),
        limit=_limit(response.headers),
        retry_after_ms=int(retry_after) if retry_after is not None else None,
    )


async def _streamed(kind: str, model: str, response: httpx.Response) -> Served:
    """Read an SSE stream: its usage, its content events, and whether it ended in an error."""
    usage, events, error_code, done = None, 0, None, False
    async for line in response.aiter_lines():
        done = done or line == "data: [DONE]"
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = orjson.loads(line[6:])
        if "error" in chunk:
            error_code = chunk["error"]["code"]
            continue
        usage = chunk.get("usage") or usage
        events += 1
    return Served(
        response.headers["x-request-id"],
        kind,
        model,
        response.status_code,
        usage,
        events,
        cut=error_code is not None,
        error_code=error_code,
        done_mono=time.monotonic(),
        limit=_limit(response.headers),
        done=done,
    )


def run_load(base_url: str, key: str, plan: Iterable[str], *, concurrency: int = 16) -> LoadResult:
    """Send exactly the requests of `plan`, `concurrency` at a time."""
    return asyncio.run(Load(base_url, key, concurrency=concurrency).run(plan))


class RunningLoad:
    """A load in a thread of its own, until `stop()`."""

    def __init__(
        self,
        base_url: str,
        key: str,
        kinds: Iterable[str],
        concurrency: int,
        *,
        max_pause_s: float = 0.0,
    ) -> None:
        self.load = Load(base_url, key, concurrency=concurrency, max_pause_s=max_pause_s)
        self._stop = threading.Event()
        plan = itertools.cycle(tuple(kinds))
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self.load.run(plan, self._stop)), name="ledger-load"
        )
        self._thread.start()

    @property
    def result(self) -> LoadResult:
        return self.load.result

    def served_between(self, start_mono: float, end_mono: float) -> int:
        return sum(1 for s in list(self.result.served) if start_mono <= s.done_mono < end_mono)

    def stop(self) -> LoadResult:
        self._stop.set()
        self._thread.join(120)
        assert not self._thread.is_alive(), "the load did not stop"
        return self.result


@contextmanager
def running_load(
    base_url: str,
    key: str,
    kinds: Iterable[str] = KINDS,
    *,
    concurrency: int = 16,
    max_pause_s: float = 0.0,
) -> Iterator[RunningLoad]:
    """Clients sending `kinds` round-robin until the block ends (the load is then stopped)."""
    load = RunningLoad(base_url, key, kinds, concurrency, max_pause_s=max_pause_s)
    try:
        yield load
    finally:
        load.stop()


# --- what the ledger holds ---------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    request_id: str
    model: str
    status: int
    error_code: str | None
    prompt_tokens: int
    completion_tokens: int
    token_source: str
    cost_micros: int | None
    currency: str | None


_ROWS = (
    "SELECT request_id, model, status, error_code, prompt_tokens, completion_tokens, "
    "token_source, cost_micros, currency FROM usage_events"
)
_DUPLICATES = (
    "SELECT count(*) FROM (SELECT request_id FROM usage_events GROUP BY request_id "
    "HAVING count(*) > 1) AS repeated"
)
_EVENT_TOTALS = (
    "SELECT count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), "
    "coalesce(sum(cost_micros), 0) FROM usage_events"
)
_DAILY_TOTALS = (
    "SELECT coalesce(sum(requests), 0), coalesce(sum(prompt_tokens), 0), "
    "coalesce(sum(completion_tokens), 0), coalesce(sum(cost_micros), 0) FROM usage_daily"
)


class Ledger:
    """Reads the ledger's tables (Postgres DSN or SQLite file) and the usage stream."""

    def __init__(
        self,
        *,
        dsn: str | None = None,
        sqlite_path: Path | None = None,
        redis_url: str | None = None,
        prefix: str = "",
    ) -> None:
        self.dsn, self.sqlite_path = dsn, sqlite_path
        self.redis = redis_sync.Redis.from_url(redis_url) if redis_url else None
        self.stream_key, self.served_key = stream_key(prefix), served_key(prefix)

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()

    def _query(self, sql: str) -> list[tuple]:
        if self.dsn is not None:
            with psycopg.connect(self.dsn, connect_timeout=5) as conn:
                return list(conn.execute(sql).fetchall())
        assert self.sqlite_path is not None
        conn = sqlite3.connect(self.sqlite_path, timeout=10)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def rows(self) -> dict[str, Row]:
        return {r[0]: Row(*r) for r in self._query(_ROWS)}

    def count(self) -> int:
        return int(self._query("SELECT count(*) FROM usage_events")[0][0])

    def duplicates(self) -> int:
        """Request ids with more than one row (the primary key should make this 0)."""
        return int(self._query(_DUPLICATES)[0][0])

    def totals(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(requests, prompt, completion, cost) summed over usage_events and over usage_daily."""
        events = tuple(int(v) for v in self._query(_EVENT_TOTALS)[0])
        daily = tuple(int(v) for v in self._query(_DAILY_TOTALS)[0])
        return events, daily

    def wait_for(self, expected: int, timeout_s: float) -> float:
        """Wait until the table holds `expected` rows; returns the seconds it took."""
        started = time.monotonic()
        while (count := self.count()) < expected:
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"{count} ledger rows after {timeout_s}s, expected {expected}")
            time.sleep(0.1)
        return time.monotonic() - started

    # The usage stream (production mode).

    def backlog(self) -> int:
        """Entries in the stream: appended, not yet committed and acknowledged."""
        assert self.redis is not None
        return int(self.redis.xlen(self.stream_key))

    def served(self) -> int:
        """Records appended, as the gateways counted them (what reconcile compares with)."""
        assert self.redis is not None
        return sum(int(v) for v in self.redis.hgetall(self.served_key).values())

    def pending_of(self, consumer: str) -> list[str]:
        """Entry ids delivered to `consumer` and not acknowledged."""
        assert self.redis is not None
        entries = self.redis.xpending_range(
            self.stream_key, GROUP, min="-", max="+", count=100_000, consumername=consumer
        )
        return [e["message_id"].decode() for e in entries]

    def request_ids_of(self, entry_ids: list[str]) -> set[str]:
        """The request ids in these stream entries."""
        assert self.redis is not None
        found = set()
        for entry_id in entry_ids:
            for _, fields in self.redis.xrange(self.stream_key, entry_id, entry_id):
                found.add(orjson.loads(fields[b"r"])["request_id"])
        return found

    def wait_drained(self, timeout_s: float) -> float:
        """Wait until the stream is empty; returns the seconds it took."""
        started = time.monotonic()
        while self.backlog():
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"{self.backlog()} records still in the stream")
            time.sleep(0.1)
        return time.monotonic() - started
