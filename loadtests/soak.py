"""Soak: the Redis-mode gateway under steady mixed load for a long time; memory must stay flat.

    .venv/bin/python loadtests/soak.py                    # 30 minutes at 200 requests/s
    .venv/bin/python loadtests/soak.py --minutes 3 --rate 300

The gateway runs as in production (`gateway serve` with the Redis limiter and usage stream,
`gateway ledger` writing Postgres), pinned to core 0; the upstream (`scenarios/upstream.py`),
a private redis-server and this load client on core 1. Traffic, open loop at `--rate`: every
fourth request streamed, every prompt new, and a second tenant with a low RPM limit whose
requests are partly refused (429s are part of steady state).

Every `--sample-s` it reads the gateway process's RSS and open file descriptors (/proc) and the
event loop's live task count (`gateway_asyncio_tasks` on /metrics). After the warm-up
(`--warmup-min`) it reports growth: RSS (target: ≤ 10% after warm-up), descriptors and tasks
(a leak grows them under steady load), and at the end that the ledger holds one row per
admitted request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scenarios import client
from scenarios.prompts import chat_payload, request_factory, words_for_tokens
from scenarios.stack import (
    Processes,
    TenantSpec,
    bootstrap,
    clean_up_on_sigterm,
    create_database,
    drop_database,
    gateway_env,
    pin_self,
    routing_file,
    start_gateway,
    start_ledger_writer,
    start_private_redis,
    start_upstream,
    usage_rows,
)

STEADY = TenantSpec("soak", rpm=10_000_000, tpm=2_000_000_000)
LIMITED = TenantSpec("soak-limited", rpm=600, tpm=2_000_000_000)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def live_tasks(base_url: str) -> int:
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("gateway_asyncio_tasks"):
                return int(float(line.rsplit(" ", 1)[1]))
    return -1


async def drive(
    port: int, makers: list, rate: float, duration_s: float, stop: asyncio.Event
) -> dict[int, int]:
    """Open-loop load in 10 s slices until `duration_s` is over; statuses seen."""
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + duration_s
    seq = 0
    while time.monotonic() < deadline and not stop.is_set():
        slice_s = min(10.0, deadline - time.monotonic())
        if slice_s < 1:
            break

        def make(_: int) -> bytes:
            nonlocal seq
            seq += 1
            return makers[seq % len(makers)](seq)

        result = await client.fixed_rate(port, make, rate, slice_s)
        for status, n in result.statuses().items():
            statuses[status] = statuses.get(status, 0) + n
        for name, n in result.errors.items():
            statuses[-1] = statuses.get(-1, 0) + n
            print(f"  client errors: {name} x{n}", flush=True)
    return statuses


async def sample_forever(pid: int, base_url: str, every_s: float, out: list) -> None:
    started = time.monotonic()
    while True:
        tasks = await asyncio.to_thread(live_tasks, base_url)
        row = (time.monotonic() - started, rss_mb(pid), open_fds(pid), tasks)
        out.append(row)
        print(f"  t={row[0]:7.0f}s rss={row[1]:7.1f} MB fds={row[2]:4d} tasks={row[3]}", flush=True)
        await asyncio.sleep(every_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup-min", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--sample-s", type=float, default=30.0)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-soak-"))
    procs = Processes(workdir)
    database_url = None
    pin_self(1)
    clean_up_on_sigterm()
    try:
        _, upstream_url = start_upstream(procs, 1)
        redis_url = start_private_redis(procs, 1)
        if redis_url is None:
            raise SystemExit("needs redis-server on PATH")
        database_url = create_database(args.postgres_url)
        config = routing_file(workdir / "routing.yaml", upstream_url)
        env = gateway_env(workdir, config, database_url=database_url, redis_url=redis_url)
        keys = bootstrap(env, [STEADY, LIMITED])
        start_ledger_writer(procs, "ledger-writer", env, 1)
        gateway, base_url = start_gateway(procs, "gateway", env, 0)
        port = int(base_url.rsplit(":", 1)[1])
        host = f"127.0.0.1:{port}"
        chat = chat_payload(words_for_tokens(500))
        stream = chat_payload(words_for_tokens(200), stream=True)
        path = "/v1/chat/completions"
        makers = [
            request_factory(chat, path, host, keys[STEADY.name]),
            request_factory(chat, path, host, keys[STEADY.name]),
            request_factory(stream, path, host, keys[STEADY.name]),
            request_factory(chat, path, host, keys[LIMITED.name]),
        ]
        print(f"soak: {args.minutes:g} min at {args.rate:g}/s; logs in {workdir}", flush=True)
        samples: list[tuple[float, float, int, int]] = []

        async def run() -> dict[int, int]:
            stop = asyncio.Event()
            sampler = asyncio.create_task(
                sample_forever(gateway.pid, base_url, args.sample_s, samples)
            )
            try:
                return await drive(port, makers, args.rate, args.minutes * 60, stop)
            finally:
                sampler.cancel()

        import uvloop

        statuses = uvloop.run(run())
        time.sleep(3)  # the writer drains the stream
        rows = asyncio.run(usage_rows(database_url))
        after = [s for s in samples if s[0] >= args.warmup_min * 60]
        print("\n## Soak result\n")
        print(f"- statuses: {dict(sorted(statuses.items()))}")
        admitted = sum(n for status, n in statuses.items() if status != 429 and status > 0)
        print(f"- ledger rows: {rows} for {admitted} admitted requests (429s are not admitted)")
        if len(after) >= 2:
            first, last = after[0], after[-1]
            growth = (last[1] - first[1]) / first[1] * 100
            peak = max(s[1] for s in after)
            print(
                f"- RSS after warm-up: {first[1]:.1f} MB at {first[0]:.0f} s -> {last[1]:.1f} MB "
                f"at {last[0]:.0f} s ({growth:+.1f}%; peak {peak:.1f} MB; target <= +10%)"
            )
            print(
                f"- open descriptors: {first[2]} -> {last[2]}; event-loop tasks: {first[3]} -> {last[3]}"
            )
        else:
            print("- too short for a post-warm-up comparison")
    finally:
        procs.stop_all()
        if database_url:
            drop_database(args.postgres_url, database_url)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
