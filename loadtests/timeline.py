"""Where one request's latency goes, hop by hop, at a fixed low rate (or back to back).

    .venv/bin/python loadtests/timeline.py                 # 50 requests/s, 500 requests
    .venv/bin/python loadtests/timeline.py --rate 0        # back to back, one at a time

Why: at 50 requests/s every request finds the gateway idle, and the latency it adds is the
gateway's own work on the critical path plus the round trips it waits for (Redis for the
reserve, the upstream, Redis for the usage append). `bench.py` gives the total; this splits it.

What it runs: the Redis-mode gateway with every feature on, as `bench.py` and `instructions.py`
run it (a private Redis, a Postgres database of its own, the standalone ledger writer; all
removed afterwards), pinned to core 0 with the rest on core 1, and with
`scenarios/timeline_probe.py` imported into it: the probe timestamps a dozen points of the
request path. One keep-alive connection sends `--requests` chats with a new ~500-token prompt
each, `1 / --rate` seconds apart, after a warm-up. For the requests whose events came in the
usual order, it prints the median and p90 of every gap between consecutive events, marking the
waits on Redis and the upstream, then the gateway's own share.

Read it as a breakdown, not as the latency: the probe's wrappers add about a microsecond per
event, and the times move by 10-30 % between runs on this VM.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scenarios import client
from scenarios.prompts import chat_payload, prompt_tokens, request_factory, words_for_tokens
from scenarios.stack import (
    PYTHON,
    ROOT,
    Processes,
    TenantSpec,
    clean_up_on_sigterm,
    free_port,
    pinned,
    redis_mode_stack,
    wait_for_port,
)

TENANT = TenantSpec("timeline", rpm=10_000_000, tpm=2_000_000_000)
COMPLETION_TOKENS = 48
WAITS = {  # gaps that are a round trip, not the gateway's work
    ("redis-send", "redis-recv"): "wait: Redis",
    ("upstream-send", "upstream-recv"): "wait: upstream",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="requests/s; 0: back to back")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--prompt-tokens", type=int, default=500)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    return parser.parse_args()


async def drive(port: int, make: client.RequestFactory, numbers: itertools.count, n: int,
                gap_s: float) -> list[float]:  # fmt: skip
    """`n` requests on one connection, `gap_s` apart; their latencies in ms (all must be 200)."""
    conn = await client.connect(port)
    latencies = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            sample = await conn.request(make(next(numbers)))
            if sample.status != 200:
                raise RuntimeError(f"status {sample.status}")
            latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(gap_s)
    finally:
        conn.close()
    return latencies


def dump(pid: int, out: Path) -> list[tuple[str, int]]:
    """The probe's events so far (it writes them on SIGUSR1)."""
    out.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            return [tuple(e) for e in json.loads(out.read_text())]  # type: ignore[misc]
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.05)
    raise RuntimeError("the probe wrote no events")


def split(events: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """Events per request: each starts at an `arrive`."""
    requests: list[list[tuple[str, int]]] = []
    for name, at in events:
        if name == "arrive":
            requests.append([])
        if requests:
            requests[-1].append((name, at))
    return requests


def report(requests: list[list[tuple[str, int]]], latencies: list[float], rate: float) -> None:
    shapes = Counter(tuple(name for name, _ in r) for r in requests)
    shape, count = shapes.most_common(1)[0]
    usual = [r for r in requests if tuple(name for name, _ in r) == shape]
    print(
        f"{'back to back' if rate == 0 else f'{rate:g} requests/s'}: {len(latencies)} requests, "
        f"client latency p50 {statistics.median(latencies):.3f} ms; "
        f"{count} of {len(requests)} in the usual order\n"
    )
    print("| from | to | p50 µs | p90 µs | |\n|---|---|---:|---:|---|")
    own = waits = 0.0
    answered = shape.index("answer>") if "answer>" in shape else len(shape) - 1
    for i in range(1, len(shape)):
        gaps = [(r[i][1] - r[i - 1][1]) / 1000 for r in usual]
        p50, p90 = statistics.median(gaps), statistics.quantiles(gaps, n=10)[-1]
        kind = WAITS.get((shape[i - 1], shape[i]), "")
        if i <= answered:
            if kind:
                waits += p50
            else:
                own += p50
        after = "" if i <= answered else "after the answer"
        print(f"| {shape[i - 1]} | {shape[i]} | {p50:.1f} | {p90:.1f} | {kind or after} |")
    print(
        f"\nuntil the answer is written (sum of medians): {own + waits:.0f} µs, of which waits "
        f"on Redis and the upstream {waits:.0f} µs and the gateway's own work {own:.0f} µs"
    )


def main() -> None:
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-timeline-"))
    procs = Processes(workdir)
    clean_up_on_sigterm()
    try:
        payload = chat_payload(words_for_tokens(args.prompt_tokens))
        stack = redis_mode_stack(
            procs, workdir, args.postgres_url, TENANT,
            prompt_tokens=prompt_tokens(payload), completion_tokens=COMPLETION_TOKENS, core=1,
        )  # fmt: skip
        with stack as ready:
            out = workdir / "timeline.json"
            env = {**ready.env, "TIMELINE_OUT": str(out)}
            port = free_port()
            boot = (
                f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'loadtests')!r}]; "
                "import scenarios.timeline_probe; from gateway.cli import main; main()"
            )
            command = [PYTHON, "-c", boot, "serve", "--port", str(port), "--workers", "1"]
            gateway = procs.start("gateway", pinned(0, command), env)
            wait_for_port(port, 60, gateway)
            make = request_factory(payload, "/v1/chat/completions", f"127.0.0.1:{port}", ready.key)
            numbers = itertools.count(1)  # a new prompt for every request
            gap_s = 1 / args.rate if args.rate > 0 else 0.0
            asyncio.run(drive(port, make, numbers, args.warmup, gap_s))
            pid = gateway.pid  # taskset execs the gateway: the same process
            skip = len(dump(pid, out))
            latencies = asyncio.run(drive(port, make, numbers, args.requests, gap_s))
            time.sleep(0.5)  # the last settle
            report(split(dump(pid, out)[skip:]), latencies, args.rate)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
