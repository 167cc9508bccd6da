"""The gateway against the upstream alone, a bare pass-through and LiteLLM, in one interleaved run.

    .venv/bin/python loadtests/bench.py              # quick: ~3 minutes (+ LiteLLM's install, once)
    .venv/bin/python loadtests/bench.py --full       # 5 rounds of longer slices: ~18 minutes
    .venv/bin/python loadtests/bench.py --profile    # also: py-spy on the Redis-mode gateway

Targets, all on the same upstream (`scenarios/upstream.py`: canned Mistral-shaped answers from
a raw asyncio server, far cheaper than anything it serves):

    direct        the load client straight to the upstream: the baseline
    passthrough   bare Starlette + aiohttp relay (`scenarios/passthrough.py`): the Python floor
    embedded      this gateway, embedded mode: SQLite, in-process limiter and ledger queue
    redis         this gateway, production mode: Redis limiter + usage stream, Postgres ledger
    litellm       LiteLLM proxy (`litellm[proxy]`, installed by this script into its own venv)

Both gateways run with every feature on: a tenant with RPM and TPM limits (high enough never to
refuse here) and a hard monthly budget, prices (every request is priced), metrics, the access
log (to a file), the ledger writer, active health checks. Each proxy runs as one process pinned
to core 0 (`taskset -c 0`); the load client (this process), the upstream and a private
redis-server run on core 1. Postgres is the machine's own server (not pinned); the script
creates a database for the run and drops it afterwards.

Requests: non-streamed chat, ~500-token prompt (counted with the gateway's tokenizer), a new
prompt for every request (a sequence number in the text), so the tokenizer's LRU never
answers; `max_tokens` 256; the upstream answers 48 completion tokens.

Phases, interleaved: every round runs each phase on each target in turn (the order rotates), so
a slow minute on this shared machine hits every target alike. Results pool over the rounds.

    closed   32 connections, closed loop: requests/s, and CPU ms per request = the proxy
             process's utime+stime (/proc/<pid>/stat, threads and children included) / requests
    fixed    open loop at 50 requests/s: latency p50/p99; added latency = the target's
             percentile minus the direct percentile
    ttft     streamed chat at 20 streams/s: time to the first body byte (the first SSE
             event); TTFT overhead = target median minus direct median (20/s, not 50/s:
             LiteLLM cannot stream 50/s on one core, and a queue would swamp its overhead)

After the rounds: Redis round trips per request (the private Redis's `INFO commandstats`) and
the ledger rows each gateway wrote, checked against the requests it was sent.

Output: tables on standard output (markdown), and `--json PATH` for the raw numbers. Logs of
every process stay in the printed work directory when `--keep` is given or something fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scenarios import client, litellm_proxy, profile
from scenarios.prompts import (
    chat_payload,
    prompt_tokens,
    request_factory,
    words_for_tokens,
)
from scenarios.stack import (
    PYTHON,
    Processes,
    TenantSpec,
    bootstrap,
    clean_up_on_sigterm,
    cli,
    cpu_seconds,
    create_database,
    delete_redis_keys,
    drop_database,
    free_port,
    gateway_env,
    last_line,
    pin_self,
    pinned,
    routing_file,
    start_gateway,
    start_ledger_writer,
    start_private_redis,
    start_upstream,
    usage_rows,
    wait_for_port,
)

ALL_TARGETS = ("direct", "passthrough", "embedded", "redis", "litellm")
LABELS = {
    "direct": "upstream direct",
    "passthrough": "Starlette+aiohttp pass-through",
    "embedded": "gateway, embedded (SQLite)",
    "redis": "gateway, Redis + Postgres",
    "litellm": "LiteLLM proxy",
}
COMPLETION_TOKENS = 48
BENCH_TENANT = TenantSpec("bench", rpm=10_000_000, tpm=2_000_000_000)  # tpm is an int32 column
# The targets, for the Redis-mode gateway with every feature on.
TARGET_CPU_MS = 0.5
TARGET_RPS = 2000
TARGET_ADDED_P50_MS = 0.8
TARGET_ADDED_P99_MS = 2.0
TARGET_TTFT_MS = 1.0


@dataclass
class Durations:
    rounds: int
    closed_s: float
    fixed_s: float
    ttft_s: float
    warmup_s: float


QUICK = Durations(rounds=2, closed_s=4, fixed_s=4, ttft_s=4, warmup_s=0.7)
FULL = Durations(rounds=5, closed_s=10, fixed_s=20, ttft_s=10, warmup_s=1.5)


@dataclass
class Target:
    name: str
    port: int
    pid: int  # the process whose CPU is counted
    key: str | None
    chat: Callable[[int], bytes] = field(repr=False, default=lambda seq: b"")
    stream: Callable[[int], bytes] = field(repr=False, default=lambda seq: b"")
    answered_ok: int = 0  # every 2xx it gave, warm-ups included (checked against the ledger)
    sent: int = 0  # every request sent, answered or not
    closed: list[client.RunResult] = field(default_factory=list)
    closed_cpu_s: float = 0.0
    fixed: list[client.RunResult] = field(default_factory=list)
    fixed_cpu_s: float = 0.0
    ttft: list[client.RunResult] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def note(self, result: client.RunResult) -> None:
        self.answered_ok += len(result.ok())
        self.sent += len(result.samples) + sum(result.errors.values())
        for status, n in result.statuses().items():
            self.statuses[status] = self.statuses.get(status, 0) + n
        for name, n in result.errors.items():
            self.errors[name] = self.errors.get(name, 0) + n


# --- setup -------------------------------------------------------------------------------------


@dataclass
class Setup:
    workdir: Path
    procs: Processes
    notes: list[str] = field(default_factory=list)
    database_url: str | None = None
    redis_url: str | None = None
    redis_prefix: str | None = None
    private_redis: bool = False
    embedded_db: Path | None = None
    writer_pid: int | None = None  # the Redis mode's standalone `gateway ledger`
    redis_env: dict[str, str] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    keep_logs: bool = False  # something failed: keep the work directory for its logs

    def problem(self, note: str) -> None:
        """A target that could not run: say so in the report, and keep the logs."""
        self.notes.append(note)
        self.keep_logs = True


def _parallel(jobs: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run blocking set-up jobs in threads; {name: result or the exception it raised}."""
    results: dict[str, Any] = {}

    def run(name: str, job: Callable[[], Any]) -> None:
        try:
            results[name] = job()
        except Exception as exc:  # reported by the caller, per target
            results[name] = exc

    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def set_up(args: argparse.Namespace, setup: Setup, tokens: int) -> dict[str, Target]:
    """Start the upstream and every requested target; the targets that came up."""
    procs, workdir = setup.procs, setup.workdir
    wanted = [t for t in args.targets if t != "litellm" or not args.no_litellm]
    upstream, upstream_url = start_upstream(
        procs, args.load_core, "--prompt-tokens", str(tokens),
        "--completion-tokens", str(COMPLETION_TOKENS),
    )  # fmt: skip
    up_port = int(upstream_url.rsplit(":", 1)[1])
    config = routing_file(workdir / "routing.yaml", upstream_url)
    targets: dict[str, Target] = {}
    if "direct" in wanted:
        targets["direct"] = Target("direct", up_port, upstream.pid, None)

    jobs: dict[str, Callable[[], Any]] = {}
    envs: dict[str, dict[str, str]] = {}
    if "embedded" in wanted:
        (workdir / "embedded").mkdir()
        envs["embedded"] = gateway_env(workdir / "embedded", config)
        setup.embedded_db = workdir / "embedded" / "gateway.db"
        jobs["embedded"] = lambda: bootstrap(envs["embedded"], [BENCH_TENANT])
    if "redis" in wanted:
        if args.redis_url:
            setup.redis_url = args.redis_url
        else:
            setup.redis_url = start_private_redis(procs, args.load_core)
            setup.private_redis = setup.redis_url is not None
        if setup.redis_url is None:
            setup.problem("redis: no redis-server found and no --redis-url; row skipped")
            wanted.remove("redis")
        else:
            try:
                setup.database_url = create_database(args.postgres_url)
            except Exception as exc:
                setup.problem(f"redis: cannot create a Postgres database ({exc}); skipped")
                wanted.remove("redis")
    if "redis" in wanted:
        (workdir / "redis").mkdir()
        setup.redis_prefix = f"bench{os.getpid()}:"
        envs["redis"] = gateway_env(
            workdir / "redis",
            config,
            database_url=setup.database_url,
            redis_url=setup.redis_url,
            redis_prefix=setup.redis_prefix,
        )
        setup.redis_env = envs["redis"]
        jobs["redis"] = lambda: bootstrap(envs["redis"], [BENCH_TENANT])
    if "litellm" in wanted:
        venv = Path(args.litellm_venv)
        jobs["litellm"] = lambda: litellm_proxy.ensure_installed(
            venv, workdir / "litellm-install.log"
        )
    print("setting up: " + ", ".join(wanted), flush=True)
    ready = _parallel(jobs)

    starts: dict[str, Callable[[], Any]] = {}
    if "passthrough" in wanted:
        port = free_port()

        def start_passthrough() -> tuple[int, int]:
            proc = procs.start(
                "passthrough",
                pinned(args.gateway_core, [
                    PYTHON, str(Path(__file__).parent / "scenarios" / "passthrough.py"),
                    "--port", str(port), "--upstream", upstream_url,
                ]),
            )  # fmt: skip
            wait_for_port(port, 60, proc)
            return proc.pid, port

        starts["passthrough"] = start_passthrough
    for mode, env in envs.items():
        if mode not in wanted:
            continue
        if isinstance(ready.get(mode), Exception):
            setup.problem(f"{mode}: set-up failed: {ready[mode]}")
            continue

        def start_mode(mode: str = mode, env: dict[str, str] = env) -> tuple[int, int]:
            if mode == "redis":  # the production layout: the writer is its own process
                setup.writer_pid = start_ledger_writer(
                    procs, "ledger-writer", env, args.load_core
                ).pid
            proc, url = start_gateway(procs, f"gateway-{mode}", env, args.gateway_core)
            return proc.pid, int(url.rsplit(":", 1)[1])

        starts[mode] = start_mode
    if "litellm" in wanted:
        installed = ready.get("litellm")
        if isinstance(installed, Exception) or installed is None or installed[0] is None:
            reason = (
                installed if isinstance(installed, Exception) else (installed or (None, "?"))[1]
            )
            setup.problem(f"litellm: not run: {reason}")
        else:
            executable, note = installed
            setup.notes.append(note)
            setup.versions["litellm"] = litellm_proxy.version(Path(args.litellm_venv))

            def start_litellm() -> tuple[int, int, str]:
                proc, url, master_key = litellm_proxy.start(
                    procs, executable, upstream_url, workdir, args.gateway_core
                )
                return proc.pid, int(url.rsplit(":", 1)[1]), master_key

            starts["litellm"] = start_litellm
    started = _parallel(starts)
    for name, value in started.items():
        if isinstance(value, Exception):
            setup.problem(f"{name}: did not start: {value} (logs in {workdir})")
            continue
        key = value[2] if name == "litellm" else ready.get(name, {}).get(BENCH_TENANT.name)
        targets[name] = Target(name, value[1], value[0], key)
    chat = chat_payload(words_for_tokens(args.prompt_tokens))
    stream = chat_payload(words_for_tokens(args.prompt_tokens), stream=True)
    for target in targets.values():
        host = f"127.0.0.1:{target.port}"
        target.chat = request_factory(chat, "/v1/chat/completions", host, target.key)
        target.stream = request_factory(stream, "/v1/chat/completions", host, target.key)
    return {name: targets[name] for name in ALL_TARGETS if name in targets}


# --- measuring ---------------------------------------------------------------------------------


class Numbers:
    """Request numbers, unique over the whole run, so no prompt is ever sent twice."""

    def __init__(self) -> None:
        self.next = 0

    def wrap(self, make: Callable[[int], bytes]) -> Callable[[int], bytes]:
        def numbered(_: int) -> bytes:
            self.next += 1
            return make(self.next)

        return numbered


async def warm_up(targets: dict[str, Target], seq: Numbers, setup: Setup) -> None:
    """A few hundred requests each (pools, caches, first-call imports); drop targets that fail."""
    for name, target in list(targets.items()):
        result = await client.closed_loop(target.port, seq.wrap(target.chat), 8, 1.5)
        stream = await client.closed_loop(target.port, seq.wrap(target.stream), 2, 0.5)
        target.note(result)
        target.note(stream)
        if not result.ok() or not stream.ok():
            setup.problem(
                f"{name}: warm-up failed (statuses {result.statuses()} {stream.statuses()}, "
                f"errors {result.errors} {stream.errors}); row skipped"
            )
            del targets[name]


async def measure(
    targets: dict[str, Target], args: argparse.Namespace, d: Durations, seq: Numbers
) -> None:
    names = list(targets)
    for round_no in range(d.rounds):
        order = names[round_no % len(names) :] + names[: round_no % len(names)]
        print(f"round {round_no + 1}/{d.rounds}: {' '.join(order)}", flush=True)
        for phase in ("closed", "fixed", "ttft"):
            for name in order:
                target = targets[name]
                if phase == "closed":
                    warm = await client.closed_loop(
                        target.port, seq.wrap(target.chat), args.connections, d.warmup_s
                    )
                    target.note(warm)
                    before = cpu_seconds(target.pid)
                    result = await client.closed_loop(
                        target.port, seq.wrap(target.chat), args.connections, d.closed_s
                    )
                    target.closed_cpu_s += cpu_seconds(target.pid) - before
                    target.closed.append(result)
                elif phase == "fixed":
                    before = cpu_seconds(target.pid)
                    result = await client.fixed_rate(
                        target.port, seq.wrap(target.chat), args.rate, d.fixed_s
                    )
                    target.fixed_cpu_s += cpu_seconds(target.pid) - before
                    target.fixed.append(result)
                else:
                    result = await client.fixed_rate(
                        target.port, seq.wrap(target.stream), args.stream_rate, d.ttft_s
                    )
                    target.ttft.append(result)
                target.note(result)


async def profile_run(
    target: Target, args: argparse.Namespace, seq: Numbers, workdir: Path
) -> dict[str, Any]:
    """py-spy on one target during a closed-loop run; the hot-spot tables and CPU per request."""
    executable = profile.py_spy()
    if executable is None:
        return {"error": "py-spy not found: .venv/bin/pip install py-spy (bench tooling only)"}
    out = workdir / f"profile-{target.name}.txt"
    target.note(await client.closed_loop(target.port, seq.wrap(target.chat), args.connections, 1.0))
    before = cpu_seconds(target.pid)
    sampler = profile.record(executable, target.pid, args.profile_s, out, args.load_core)
    await asyncio.sleep(0.3)  # let py-spy attach
    result = await client.closed_loop(
        target.port, seq.wrap(target.chat), args.connections, args.profile_s - 0.6
    )
    cpu_s = cpu_seconds(target.pid) - before
    target.note(result)
    _, stderr = await asyncio.to_thread(sampler.communicate)
    if sampler.returncode != 0 or not out.exists():
        return {"error": f"py-spy failed ({sampler.returncode}): {stderr.decode()[-500:]}"}
    folded = profile.parse(out)
    requests = len(result.ok()) or 1
    cpu_ms = cpu_s * 1000 / requests
    return {
        "target": target.name,
        "requests": len(result.ok()),
        "rps": len(result.ok()) / result.elapsed_s,
        "cpu_ms_per_request_with_py_spy": cpu_ms,
        "samples": folded.samples,
        "raw": str(out),
        "self": [(h.name, h.share, h.share * cpu_ms) for h in folded.self_top],
        "inclusive": [(h.name, h.share, h.share * cpu_ms) for h in folded.inclusive_top],
        "lines": [(h.name, h.share, h.share * cpu_ms) for h in folded.lines_top],
        "packages": [(h.name, h.share, h.share * cpu_ms) for h in folded.packages],
        "attributed": [(h.name, h.share, h.share * cpu_ms) for h in folded.attributed],
    }


async def scale_out(
    setup: Setup, args: argparse.Namespace, d: Durations, seq: Numbers
) -> list[dict[str, float]]:
    """The Redis-mode gateway with 1, then 2, `serve --workers` processes on both cores (the
    load client, upstream and Redis stay on core 1): requests/s and CPU per request."""
    assert setup.redis_env is not None
    key = last_line(cli(setup.redis_env, "keys", "create", BENCH_TENANT.name, "--name", "scale"))
    chat = chat_payload(words_for_tokens(args.prompt_tokens))
    out = []
    for workers in (1, 2):
        proc, url = await asyncio.to_thread(
            start_gateway, setup.procs, f"gateway-workers{workers}", setup.redis_env,
            f"{args.gateway_core},{args.load_core}", workers=workers,
        )  # fmt: skip
        port = int(url.rsplit(":", 1)[1])
        make = seq.wrap(request_factory(chat, "/v1/chat/completions", f"127.0.0.1:{port}", key))
        await client.closed_loop(port, make, args.connections, max(2.0, d.warmup_s * 2))
        before = cpu_seconds(proc.pid)
        result = await client.closed_loop(port, make, args.connections, d.closed_s * 2)
        cpu_s = cpu_seconds(proc.pid) - before
        ok = len(result.ok())
        out.append({
            "workers": workers,
            "rps": ok / result.elapsed_s,
            "cpu_ms": cpu_s * 1000 / ok if ok else float("nan"),
            "non_2xx": len(result.samples) - ok + sum(result.errors.values()),
        })  # fmt: skip
        await asyncio.to_thread(setup.procs.stop, proc)
    return out


def print_scale_out(rows: list[dict[str, float]], args: argparse.Namespace) -> list[str]:
    lines = [
        "",
        f"### Scale-out: Redis-mode gateway, `serve --workers N` on cores 0,1 ({args.connections} "
        "connections; the load client, upstream and Redis share core 1)",
        "",
        "| workers | req/s | CPU ms/req (all workers) | failed |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['workers']:.0f} | {r['rps']:,.0f} | {r['cpu_ms']:.3f} | {r['non_2xx']:.0f} |"
        for r in rows
    ]
    return lines


# --- checks after the run ----------------------------------------------------------------------


def redis_round_trips(redis_url: str) -> dict[str, int]:
    """Calls per command, plus the server's totals (`_commands`, `_in_bytes`, `_out_bytes`)."""
    from redis import Redis

    client_ = Redis.from_url(redis_url)
    try:
        stats = client_.info("commandstats")
        totals = client_.info("stats")
    finally:
        client_.close()
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    calls["_commands"] = int(totals["total_commands_processed"])
    calls["_in_bytes"] = int(totals["total_net_input_bytes"])
    calls["_out_bytes"] = int(totals["total_net_output_bytes"])
    return calls


async def pg_rows(setup: Setup) -> int:
    """Rows in the Redis mode's Postgres ledger."""
    return await usage_rows(setup.database_url or "")


async def ledger_rows(setup: Setup, targets: dict[str, Target]) -> dict[str, tuple[int, int, int]]:
    """{mode: (rows in usage_events, 2xx answers, requests sent)}, once the writers drained."""
    out: dict[str, tuple[int, int, int]] = {}

    async def count_pg() -> int:
        return await pg_rows(setup)

    def count_sqlite() -> int:
        with sqlite3.connect(setup.embedded_db) as db:  # type: ignore[arg-type]
            return int(db.execute("SELECT count(*) FROM usage_events").fetchone()[0])

    deadline = time.monotonic() + 20
    while True:
        if "redis" in targets and setup.database_url:
            redis = targets["redis"]
            out["redis"] = (await count_pg(), redis.answered_ok, redis.sent)
        if "embedded" in targets and setup.embedded_db:
            embedded = targets["embedded"]
            out["embedded"] = (
                await asyncio.to_thread(count_sqlite),
                embedded.answered_ok,
                embedded.sent,
            )
        if all(rows >= sent for rows, _, sent in out.values()) or time.monotonic() > deadline:
            return out
        await asyncio.sleep(1)


# --- report ------------------------------------------------------------------------------------


def _ms(seconds: float) -> float:
    return seconds * 1000


def summarise(targets: dict[str, Target]) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    for name, t in targets.items():
        closed_ok = [s for r in t.closed for s in r.ok()]
        elapsed = sum(r.elapsed_s for r in t.closed)
        fixed = [s.total_s for r in t.fixed for s in r.ok()]
        fixed_n = sum(len(r.ok()) for r in t.fixed)
        ttft = [s.first_byte_s for r in t.ttft for s in r.ok()]
        rows[name] = {
            "rps": len(closed_ok) / elapsed if elapsed else float("nan"),
            "cpu_ms": _ms(t.closed_cpu_s) / len(closed_ok) if closed_ok else float("nan"),
            "load_p50_ms": _ms(client.percentile([s.total_s for s in closed_ok], 50)),
            "load_p99_ms": _ms(client.percentile([s.total_s for s in closed_ok], 99)),
            "fixed_p50_ms": _ms(client.percentile(fixed, 50)),
            "fixed_p99_ms": _ms(client.percentile(fixed, 99)),
            "fixed_cpu_ms": _ms(t.fixed_cpu_s) / fixed_n if fixed_n else float("nan"),
            "fixed_n": fixed_n,
            "ttft_p50_ms": _ms(client.percentile(ttft, 50)),
            "ttft_p99_ms": _ms(client.percentile(ttft, 99)),
            "ttft_n": len(ttft),
            "closed_n": len(closed_ok),
        }
    direct = rows.get("direct")
    for row in rows.values():
        if direct is not None:
            row["added_p50_ms"] = row["fixed_p50_ms"] - direct["fixed_p50_ms"]
            row["added_p99_ms"] = row["fixed_p99_ms"] - direct["fixed_p99_ms"]
            row["ttft_over_ms"] = row["ttft_p50_ms"] - direct["ttft_p50_ms"]
        else:
            row["added_p50_ms"] = row["added_p99_ms"] = row["ttft_over_ms"] = float("nan")
    return rows


def _f(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:,.{digits}f}"  # nan -> "-"


def _ratio(a: float, b: float) -> str:
    if a != a or b != b or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def report(rows: dict[str, dict[str, float]], args: argparse.Namespace, d: Durations) -> list[str]:
    lines = [
        f"### Results ({d.rounds} rounds; closed loop {args.connections} connections, "
        f"{d.closed_s:g} s per slice; fixed rate {args.rate:g}/s, {d.fixed_s:g} s per slice; "
        f"streams {args.stream_rate:g}/s, {d.ttft_s:g} s per slice)",
        "",
        "| target | req/s (closed) | CPU ms/req | p50 / p99 ms at load | p50 / p99 ms at "
        f"{args.rate:g}/s | added p50 / p99 ms | CPU ms/req at {args.rate:g}/s | TTFT p50 / p99 ms "
        "| TTFT overhead p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        direct = name == "direct"
        lines.append(
            f"| {LABELS[name]} | {_f(r['rps'], 0)} | {_f(r['cpu_ms'], 3)}{' (upstream)' if direct else ''} "
            f"| {_f(r['load_p50_ms'])} / {_f(r['load_p99_ms'])} "
            f"| {_f(r['fixed_p50_ms'], 3)} / {_f(r['fixed_p99_ms'], 3)} "
            f"| {'-' if direct else _f(r['added_p50_ms'], 3) + ' / ' + _f(r['added_p99_ms'], 3)} "
            f"| {_f(r['fixed_cpu_ms'], 3)} "
            f"| {_f(r['ttft_p50_ms'], 3)} / {_f(r['ttft_p99_ms'], 3)} "
            f"| {'-' if direct else _f(r['ttft_over_ms'], 3)} |"
        )
    lines += ["", "Samples: " + "; ".join(
        f"{n} {r['closed_n']:.0f} closed / {r['fixed_n']:.0f} fixed / {r['ttft_n']:.0f} streams"
        for n, r in rows.items()
    )]  # fmt: skip
    direct, lite = rows.get("direct"), rows.get("litellm")
    lines += [
        "",
        "### Ratios (to the upstream direct, and to LiteLLM; lower is better except req/s)",
        "",
        "| target | req/s ÷ direct | req/s ÷ LiteLLM | CPU/req ÷ LiteLLM | latency p50 ÷ direct "
        "| added p50 ÷ LiteLLM's | added p99 ÷ LiteLLM's | TTFT p50 ÷ direct | TTFT overhead ÷ LiteLLM's |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    nan = float("nan")
    for name, r in rows.items():
        if name == "direct":
            continue
        d_ = direct or {}
        l_ = lite or {}
        lines.append(
            f"| {LABELS[name]} | {_ratio(r['rps'], d_.get('rps', nan))} "
            f"| {_ratio(r['rps'], l_.get('rps', nan))} "
            f"| {_ratio(r['cpu_ms'], l_.get('cpu_ms', nan))} "
            f"| {_ratio(r['fixed_p50_ms'], d_.get('fixed_p50_ms', nan))} "
            f"| {_ratio(r['added_p50_ms'], l_.get('added_p50_ms', nan))} "
            f"| {_ratio(r['added_p99_ms'], l_.get('added_p99_ms', nan))} "
            f"| {_ratio(r['ttft_p50_ms'], d_.get('ttft_p50_ms', nan))} "
            f"| {_ratio(r['ttft_over_ms'], l_.get('ttft_over_ms', nan))} |"
        )
    for mode in ("redis", "embedded"):
        r = rows.get(mode)
        if r is None:
            continue
        checks = [
            ("CPU per request", r["cpu_ms"], "ms", TARGET_CPU_MS, "<="),
            (f"requests/s at {args.connections} connections", r["rps"], "/s", TARGET_RPS, ">="),
            (f"added latency p50 at {args.rate:g}/s", r["added_p50_ms"], "ms", TARGET_ADDED_P50_MS, "<="),
            (f"added latency p99 at {args.rate:g}/s", r["added_p99_ms"], "ms", TARGET_ADDED_P99_MS, "<="),
            ("streaming TTFT overhead p50", r["ttft_over_ms"], "ms", TARGET_TTFT_MS, "<="),
        ]  # fmt: skip
        lines += ["", f"### Issue targets, {LABELS[mode]}", ""]
        for label, value, unit, goal, op in checks:
            met = value <= goal if op == "<=" else value >= goal
            verdict = "met" if met else "MISSED"
            lines.append(
                f"- {label}: {_f(value, 3)} {unit} (target {op} {goal:g} {unit}): {verdict}"
            )
    return lines


def _cpuinfo() -> str:
    fields: dict[str, str] = {}
    with open("/proc/cpuinfo") as info:
        for row in info:
            name, _, value = row.partition(":")
            fields.setdefault(name.strip(), value.strip())
    hypervisor = " (virtual machine)" if "hypervisor" in fields.get("flags", "").split() else ""
    return (
        f"{fields.get('model name', 'unknown')} (family {fields.get('cpu family', '?')} model "
        f"{fields.get('model', '?')}, {float(fields.get('cpu MHz', 'nan')):.0f} MHz, "
        f"cache {fields.get('cache size', '?')}){hypervisor}"
    )


def service_versions(setup: Setup, postgres_url: str) -> None:
    """Redis and Postgres server versions, into `setup.versions` (best effort)."""
    try:
        from redis import Redis

        if setup.redis_url:
            client_ = Redis.from_url(setup.redis_url)
            try:
                setup.versions["redis-server"] = str(client_.info("server")["redis_version"])
            finally:
                client_.close()
    except Exception as exc:  # a version is not worth failing the run
        setup.versions["redis-server"] = f"unknown ({exc})"
    if setup.database_url:
        try:
            import asyncpg

            async def version() -> str:
                conn = await asyncpg.connect(postgres_url)
                try:
                    return str(await conn.fetchval("SHOW server_version"))
                finally:
                    await conn.close()

            setup.versions["postgres"] = asyncio.run(version())
        except Exception as exc:
            setup.versions["postgres"] = f"unknown ({exc})"


def machine(setup: Setup) -> list[str]:
    cpu = _cpuinfo()
    import aiohttp
    import redis
    import starlette
    import uvicorn

    versions = {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "uvicorn": uvicorn.__version__,
        "starlette": starlette.__version__,
        "aiohttp": aiohttp.__version__,
        "redis-py": redis.__version__,
        **{k: v for k, v in setup.versions.items() if k != "load_start"},
    }
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores (gateway on core 0, load client + upstream + Redis on core 1)",
        f"- kernel: {platform.release()}; {platform.platform()}",
        "- " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- load average at start: {setup.versions.get('load_start', '?')}, at end: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ]


def print_profile(data: dict[str, Any]) -> list[str]:
    if "error" in data:
        return ["", f"profile: {data['error']}"]
    lines = [
        "",
        f"### Profile: {LABELS[data['target']]}, {data['requests']} requests at "
        f"{data['rps']:.0f}/s, {data['samples']} busy samples, "
        f"{data['cpu_ms_per_request_with_py_spy']:.3f} CPU ms/req while sampled",
        f"(raw folded stacks: {data['raw']})",
    ]
    for key, title in (
        ("attributed", "by gateway line (library time charged to the innermost gateway line)"),
        ("packages", "self time by package (innermost frame)"),
        ("self", "self time by function (innermost Python frame)"),
        ("inclusive", "inclusive time, gateway functions"),
        ("lines", "hottest lines"),
    ):
        lines += ["", f"{title}:", "", "| function | share | ms/req |", "|---|---:|---:|"]
        lines += [f"| `{n}` | {s * 100:.1f}% | {ms:.3f} |" for n, s, ms in data[key]]
    return lines


# --- main --------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Gateway vs upstream vs pass-through vs LiteLLM, interleaved (see the module docstring)."
    )
    parser.add_argument("--full", action="store_true", help="5 rounds of longer slices (~18 min)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--closed-s", type=float, help="seconds per closed-loop slice")
    parser.add_argument("--fixed-s", type=float, help="seconds per fixed-rate slice")
    parser.add_argument("--ttft-s", type=float, help="seconds per streaming slice")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=50.0, help="fixed-rate requests/s")
    parser.add_argument(
        "--stream-rate",
        type=float,
        default=20.0,
        help="streams/s for TTFT (default 20: LiteLLM cannot sustain 50 streams/s on one core)",
    )
    parser.add_argument("--prompt-tokens", type=int, default=500)
    parser.add_argument(
        "--targets", default=",".join(ALL_TARGETS), help=f"comma-separated subset of {ALL_TARGETS}"
    )
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM (no install)")
    parser.add_argument("--litellm-venv", default="/tmp/bench-litellm-venv")
    parser.add_argument(
        "--postgres-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="an admin connection: the run creates, then drops, its own database",
    )
    parser.add_argument(
        "--redis-url", help="use this Redis (unique key prefix, keys deleted after) instead of "
        "a private redis-server"
    )  # fmt: skip
    parser.add_argument("--gateway-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="py-spy on the Redis-mode gateway")
    parser.add_argument(
        "--scale-out",
        action="store_true",
        help="also the Redis-mode gateway with 1 and 2 worker processes on both cores",
    )
    parser.add_argument("--profile-target", default="redis")
    parser.add_argument("--profile-s", type=float, default=15.0)
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(ALL_TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}")
    if (os.cpu_count() or 1) < 2:
        args.gateway_core = args.load_core = None
    return args


def main() -> None:
    args = parse_args()
    base = FULL if args.full else QUICK
    d = Durations(
        rounds=args.rounds or base.rounds,
        closed_s=args.closed_s or base.closed_s,
        fixed_s=args.fixed_s or base.fixed_s,
        ttft_s=args.ttft_s or base.ttft_s,
        warmup_s=base.warmup_s,
    )
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    setup = Setup(workdir, Processes(workdir))
    clean_up_on_sigterm()
    setup.versions["load_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    pin_self(args.load_core)
    ok = False
    try:
        chat = chat_payload(words_for_tokens(args.prompt_tokens))
        tokens = prompt_tokens(chat)
        print(
            f"work directory {workdir}; prompt {tokens} tokens (mistral-common Tekken)", flush=True
        )
        targets = set_up(args, setup, tokens)
        service_versions(setup, args.postgres_url)
        print(f"set up in {time.monotonic() - started:.0f}s: {', '.join(targets)}", flush=True)
        for note in setup.notes:
            print(f"  note: {note}", flush=True)
        results: dict[str, Any] = {}
        redis_before = (
            redis_round_trips(setup.redis_url) if setup.private_redis and setup.redis_url else None
        )

        async def run() -> None:
            seq = Numbers()
            await warm_up(targets, seq, setup)
            if setup.writer_pid is not None:  # the writer's CPU over the measured rows only
                await asyncio.sleep(1.5)  # the warm-up's rows written first
                writer_start = (cpu_seconds(setup.writer_pid), await pg_rows(setup))
            await measure(targets, args, d, seq)
            if args.profile and args.profile_target in targets:
                print(f"profiling {args.profile_target} for {args.profile_s:g}s", flush=True)
                results["profile"] = await profile_run(
                    targets[args.profile_target], args, seq, workdir
                )
            results["ledger"] = await ledger_rows(setup, targets)
            if setup.writer_pid is not None:
                results["writer"] = (
                    cpu_seconds(setup.writer_pid) - writer_start[0],
                    results["ledger"].get("redis", (0, 0, 0))[0] - writer_start[1],
                )
            if redis_before is not None:  # before the scale-out runs add their own commands
                results["redis_after"] = redis_round_trips(setup.redis_url)  # type: ignore[arg-type]
            if args.scale_out and "redis" in targets:
                print("scale-out: 1 and 2 worker processes on cores 0,1", flush=True)
                results["scale_out"] = await scale_out(setup, args, d, seq)

        try:
            import uvloop

            uvloop.run(run())
        except ImportError:
            asyncio.run(run())
        rows = summarise(targets)
        lines = ["## Machine", "", *machine(setup), "", *report(rows, args, d)]
        lines += ["", "### Checks", ""]
        if redis_before is not None and "redis" in targets:
            after = results["redis_after"]
            calls = {k: after.get(k, 0) - redis_before.get(k, 0) for k in after}
            evals = sum(v for k, v in calls.items() if k.startswith("eval"))
            served = targets["redis"].answered_ok
            lines.append(
                f"- Redis: {evals / served:.2f} EVAL/EVALSHA per request answered by the Redis-mode "
                f"gateway ({evals} over {served}; design: 2, reserve + settle); other commands: "
                + ", ".join(f"{k} {v}" for k, v in sorted(calls.items()) if v and not k.startswith(("eval", "_")) and k != "info")
            )  # fmt: skip
            lines.append(
                f"- Redis per request (gateway and ledger writer together, for sizing): "
                f"{calls['_commands'] / served:.1f} commands (scripts' inner calls included), "
                f"{calls['_in_bytes'] / served:,.0f} bytes in, {calls['_out_bytes'] / served:,.0f} "
                f"bytes out; pipeline round trips are batched per event-loop turn"
            )
        if results.get("writer") and results["writer"][1] > 0:
            writer_cpu_s, rows_written = results["writer"]
            lines.append(
                f"- ledger writer (`gateway ledger`, its own process as in the Helm chart, "
                f"not in the gateway's CPU): {writer_cpu_s * 1e6 / rows_written:,.0f} µs CPU per "
                f"row over the measured rounds ({rows_written} rows)"
            )
        for mode, (rows_, answered, sent) in results.get("ledger", {}).items():
            verdict = "every request recorded" if rows_ >= sent else "MISSING rows"
            lines.append(
                f"- ledger ({mode}): {rows_} usage rows for {sent} requests sent "
                f"({answered} answered 2xx): {verdict}"
            )
        for name, t in targets.items():
            bad = {s: n for s, n in t.statuses.items() if not 200 <= s < 300}
            if bad or t.errors:
                lines.append(f"- {name}: non-2xx {bad}, client errors {t.errors}")
        lines += [f"- note: {n}" for n in setup.notes]
        if "scale_out" in results:
            lines += print_scale_out(results["scale_out"], args)
        if "profile" in results:
            lines += print_profile(results["profile"])
        lines.append("")
        lines.append(f"(total run time {time.monotonic() - started:.0f}s)")
        print("\n" + "\n".join(lines), flush=True)
        if args.json:
            payload = {
                "rows": rows,
                "durations": asdict(d),
                "args": {k: v for k, v in vars(args).items() if k != "json"},
                "checks": {k: v for k, v in results.items()},
                "machine": machine(setup),
            }
            args.json.write_text(json.dumps(payload, indent=2, default=str))
        ok = True
    finally:
        setup.procs.stop_all()
        if setup.database_url:
            try:
                drop_database(args.postgres_url, setup.database_url)
            except Exception as exc:
                print(f"warning: could not drop {setup.database_url}: {exc}", file=sys.stderr)
        if setup.redis_url and not setup.private_redis and setup.redis_prefix:
            delete_redis_keys(setup.redis_url, setup.redis_prefix)
        if ok and not args.keep and not setup.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)


if __name__ == "__main__":
    main()
