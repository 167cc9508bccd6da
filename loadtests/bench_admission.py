"""Admission + settle cost per request, on the gateway's real path, against a real Redis.

    .venv/bin/python loadtests/bench_admission.py [--redis-url redis://127.0.0.1:6379/0]
        [--requests N] [--concurrency C]

What runs is what `gateway/proxy.py` runs for a chat request: `Admitter.admit` (count the prompt
with the model's tokenizer, plan the buckets, one reserve) then `Admitter.settle` (one settle, in
a background task), over the limiter `gateway/app.py:make_limiter` builds in production
(`RedisLimiter` behind `FailoverLimiter`). The tenant has RPM + TPM defaults, a per-model
override and a concurrency limit, all set high enough that every request is admitted.

Four phases, each over N requests:
- tokenizer: `count_prompt_tokens` alone, one at a time, on fresh bodies (CPU only);
- tokenizer, growing conversations: the same, on what a chat client sends turn after turn
  (the whole history again, plus one answer and one new question), up to 12 turns;
- admit+settle, count cached: bodies the tokenizer's LRU already counted, so this is the
  limiter's cost (policy, two Redis round trips, background settle);
- admit+settle, full: fresh bodies, so tokenisation is paid too (what a request costs).

For each: wall time per request (median, p99; under `--concurrency` it includes waiting for the
event loop), CPU time per request (process time over the phase / N), and, from the Redis server,
commands per request (`INFO commandstats` and `total_commands_processed` deltas / N). Commands a
Lua script runs inside Redis are counted apart from the commands clients send (round trips).
Counts are server-wide: run against a Redis nobody else is using (the table flags foreign ones).
Keys live under a unique prefix and are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import re
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from redis.asyncio import Redis

from gateway.app import make_limiter
from gateway.auth.principal import Principal
from gateway.clock import SystemClock
from gateway.ledger.usage import UsedTokens
from gateway.limits.admission import Admitter
from gateway.limits.failover import FailoverLimiter
from gateway.limits.policy import RateLimits, TenantLimits
from gateway.limits.tokens import count_prompt_tokens
from gateway.routing.residency import ResidencyPolicy
from gateway.settings import Settings
from gateway.tasks import BackgroundTasks
from gateway.upstream.adapter import Endpoint

MODEL = "mistral-small-latest"  # public name and, on La Plateforme, the upstream name too
MAX_TOKENS = 256
CACHED_BODIES = 1024  # below the tokenizer's LRU size (2048), so phase 2 always hits
OWN_COMMANDS = {"info"}  # this script's own INFO snapshots
EVALS = {"evalsha", "eval", "evalsha_ro", "eval_ro"}  # a limiter call: one per round trip
SETUP = {"hello", "client|setinfo", "script|load"}  # per connection or per process, not request
VOCABULARY = (
    "the gateway routes each request to a deployment in the tenant's region and counts the "
    "prompt tokens before it reserves them against the bucket limits while the upstream model "
    "streams an answer back chunk by chunk and the ledger records usage cost latency errors "
    "retries fallbacks budgets quotas keys invoices customers orders shipments refunds"
)
WORDS = VOCABULARY.split()
SYSTEM = (
    "You are a support assistant for an online shop. Answer briefly and politely, cite the "
    "order number when there is one, never invent tracking data, and hand over to a human "
    "agent when the customer asks for a refund above 200 euros or mentions a legal matter."
)


@dataclass(frozen=True)
class Phase:
    """The measurements of one phase."""

    name: str
    wall_ms: list[float]
    admit_ms: list[float]
    cpu_ms_per_request: float
    redis: dict[str, float] | None  # per request; None when the phase does not touch Redis
    call_cpu_ms: list[float] = field(default_factory=list)  # per call, sequential phases only
    local: int = 0  # admissions the FailoverLimiter answered locally (Redis too slow or down)


class SettleWatch(BackgroundTasks):
    """The app's background task set, plus a future for the settle a request just spawned."""

    def __init__(self) -> None:
        super().__init__()
        self.last: asyncio.Future[None] | None = None

    def spawn(self, coroutine: Coroutine[Any, Any, Any], *, name: str) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def watched() -> None:
            try:
                await coroutine
            finally:
                done.set_result(None)

        super().spawn(watched(), name=name)
        self.last = done


def chat_body(rng: random.Random, serial: int) -> dict[str, Any]:
    """A support conversation of a few turns (a few hundred tokens), unique per serial."""

    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words))

    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    for _ in range(rng.randint(1, 3)):
        messages.append({"role": "user", "content": text(rng.randint(20, 80))})
        messages.append({"role": "assistant", "content": text(rng.randint(30, 120))})
    messages.append({"role": "user", "content": f"Order #{serial}: {text(rng.randint(10, 60))}?"})
    return {"model": MODEL, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0.3}


def conversation_bodies(rng: random.Random, serial: Iterator[int], n: int) -> list[dict[str, Any]]:
    """`n` requests of conversations that grow a turn per request, 1 to 12 turns each: every
    request is the history so far, then a new question (the answer joins the history)."""
    bodies: list[dict[str, Any]] = []
    while len(bodies) < n:
        template = chat_body(rng, next(serial))
        history = template["messages"][:1]  # the system prompt
        for _ in range(min(12, n - len(bodies))):
            question, answer = chat_body(rng, next(serial))["messages"][1:3]
            bodies.append({**template, "messages": [*history, question]})
            history += [question, answer]
    return bodies


def bench_principal(tenant_id: str) -> Principal:
    """A tenant with RPM + TPM defaults, a per-model override and a concurrency cap."""
    limits = TenantLimits(
        default=RateLimits(rpm=1_000_000, tpm=2_000_000_000, tpm_burst=200_000_000),
        models={MODEL: RateLimits(rpm=500_000, tpm=1_000_000_000)},
        concurrency=100_000,
    )
    return Principal(
        tenant_id=tenant_id,
        key_id="bench",
        tenant_name="bench",
        residency=ResidencyPolicy(None),
        allowed_models=None,
        limits=limits,
    )


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


Counts = tuple[dict[str, int], int, int]  # calls per command, total commands, EVAL* usec


async def redis_counts(client: Redis) -> Counts:
    """Calls per command (`INFO commandstats`), `total_commands_processed`, and the server
    time spent in EVAL/EVALSHA (scripts included) in microseconds."""
    stats = await client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}
    script_usec = sum(
        int(row["usec"]) for name, row in stats.items() if name.removeprefix("cmdstat_") in EVALS
    )
    total = int((await client.info("stats"))["total_commands_processed"])
    return calls, total, script_usec


def in_script_commands() -> set[str]:
    """Commands the limiter's Lua scripts call inside Redis (they show in commandstats too)."""
    names: set[str] = set()
    for script in ("reserve_v1.lua", "settle_v1.lua"):
        source = resources.files("gateway.limits").joinpath("lua", script).read_text("utf-8")
        names |= {m.lower() for m in re.findall(r"redis\.call\(\s*['\"](\w+)['\"]", source)}
    return names


def per_request(before: Counts, after: Counts, n: int) -> dict[str, float]:
    """Command deltas per request: round trips (commands clients sent), commands the scripts
    ran inside Redis, commands from other clients, and all commands processed."""
    delta = {k: v - before[0].get(k, 0) for k, v in after[0].items() if v != before[0].get(k, 0)}
    ours = {k: v for k, v in delta.items() if k not in OWN_COMMANDS}
    scripted = in_script_commands()
    sent = sum(v for k, v in ours.items() if k in EVALS | SETUP)
    inside = sum(v for k, v in ours.items() if k in scripted)
    own = sum(v for k, v in delta.items() if k in OWN_COMMANDS)
    return {
        "round_trips": sent / n,
        "in_script": inside / n,
        "foreign": (sum(ours.values()) - sent - inside) / n,
        "total_commands_processed": (after[1] - before[1] - own) / n,
        "script_us": (after[2] - before[2]) / n,
    }


async def run_concurrently(
    count: int, concurrency: int, one: Callable[[int], Awaitable[None]]
) -> None:
    """Call `one(i)` for i in range(count), `concurrency` at a time."""
    serials = iter(range(count))

    async def worker() -> None:
        for serial in serials:
            await one(serial)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def admit_and_settle(
    admitter: Admitter,
    tasks: SettleWatch,
    principal: Principal,
    body: dict[str, Any],
    rng: random.Random,
) -> tuple[float, float]:
    """One request's admission path: (admit ms, admit + settle ms)."""
    started = time.perf_counter()
    ticket = await admitter.admit(principal, Endpoint.CHAT, MODEL, body, MODEL)
    admitted = time.perf_counter()
    assert ticket is not None
    used = UsedTokens(ticket.prompt_tokens, rng.randint(1, MAX_TOKENS), "provider")
    tasks.last = None
    admitter.settle(ticket, used)
    if tasks.last is not None:  # settle spawned a task: the request's cost ends when it does
        await tasks.last
    done = time.perf_counter()
    return (admitted - started) * 1000, (done - started) * 1000


async def limiter_phase(
    name: str,
    bodies: Callable[[int], dict[str, Any]],
    args: argparse.Namespace,
    ctx: dict[str, Any],
) -> Phase:
    """N requests through admit + settle at the given concurrency, with Redis counted."""
    wall: list[float] = []
    admit: list[float] = []
    rng = random.Random(7)

    async def one(serial: int) -> None:
        admit_ms, total_ms = await admit_and_settle(
            ctx["admitter"], ctx["tasks"], ctx["principal"], bodies(serial), rng
        )
        admit.append(admit_ms)
        wall.append(total_ms)

    limiter: FailoverLimiter = ctx["limiter"]
    local = limiter.degraded_decisions
    before = await redis_counts(ctx["stats"])
    cpu = time.process_time()
    await run_concurrently(args.requests, args.concurrency, one)
    await ctx["tasks"].drain()
    cpu_ms = (time.process_time() - cpu) * 1000 / args.requests
    after = await redis_counts(ctx["stats"])
    redis = per_request(before, after, args.requests)
    return Phase(name, wall, admit, cpu_ms, redis, local=limiter.degraded_decisions - local)


def tokenizer_phase(
    bodies: list[dict[str, Any]], name: str = "tokenizer (count_prompt_tokens)"
) -> tuple[Phase, float]:
    """`count_prompt_tokens` alone on fresh bodies; also returns the mean prompt size."""
    wall: list[float] = []
    call_cpu: list[float] = []
    counts: list[int] = []
    cpu = time.process_time()
    for body in bodies:
        started, started_cpu = time.perf_counter(), time.thread_time()
        counts.append(count_prompt_tokens(Endpoint.CHAT, body, MODEL))
        call_cpu.append((time.thread_time() - started_cpu) * 1000)
        wall.append((time.perf_counter() - started) * 1000)
    cpu_ms = (time.process_time() - cpu) * 1000 / len(bodies)
    phase = Phase(name, wall, [], cpu_ms, None, call_cpu)
    return phase, statistics.mean(counts)


def print_table(phases: list[Phase], args: argparse.Namespace, prompt_tokens: float) -> None:
    loop = asyncio.get_running_loop().__class__.__module__.split(".")[0]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"\n{args.requests} requests per phase, concurrency {args.concurrency}, loop {loop}, "
        f"mean prompt {prompt_tokens:.0f} tokens + max_tokens {MAX_TOKENS}, "
        f"{os.cpu_count()} CPUs, load average {load}\n"
    )
    header = (
        f"{'phase':<34} {'p50 ms':>8} {'p99 ms':>8} {'admit p50':>9} {'CPU ms/req':>10} "
        f"{'RT/req':>6} {'in-script':>9} {'total cmds':>10} {'Redis us':>8}"
    )
    print(header)
    print("-" * len(header))
    for phase in phases:
        admit = f"{statistics.median(phase.admit_ms):9.3f}" if phase.admit_ms else f"{'-':>9}"
        redis = phase.redis
        columns = (
            f"{redis['round_trips']:6.2f} {redis['in_script']:9.2f} "
            f"{redis['total_commands_processed']:10.2f} {redis['script_us']:8.1f}"
            if redis
            else f"{'-':>6} {'-':>9} {'-':>10} {'-':>8}"
        )
        print(
            f"{phase.name:<34} {statistics.median(phase.wall_ms):8.3f} "
            f"{percentile(phase.wall_ms, 99):8.3f} {admit} {phase.cpu_ms_per_request:10.3f} "
            f"{columns}"
        )
    print()
    for phase in phases:
        if phase.call_cpu_ms:
            print(
                f"{phase.name}: CPU per call p50 {statistics.median(phase.call_cpu_ms):.3f} ms, "
                f"p99 {percentile(phase.call_cpu_ms, 99):.3f} ms (thread time: a wall p99 far "
                "above it is the process waiting for a core)"
            )
        if phase.local:
            print(
                f"warning: {phase.name}: {phase.local} of {len(phase.wall_ms)} admissions fell "
                "back to the local limiter (a Redis call failed or outlasted --redis-timeout-s): "
                "this row is not a Redis measurement; rerun on a quieter machine or raise it"
            )
        if phase.redis and phase.redis["foreign"] > 0:
            print(
                f"warning: {phase.name}: {phase.redis['foreign'] * len(phase.wall_ms):.0f} "
                "commands came from other clients of this Redis; its counts are not ours alone"
            )
    print(
        "Per request. p50/p99: admit + settle wall time; admit p50: admit alone; CPU: process\n"
        "time / N; RT: commands clients sent to Redis (EVALSHA, plus connection set-up if any);\n"
        "in-script: commands the Lua scripts ran inside Redis; total cmds: INFO stats\n"
        "total_commands_processed; Redis us: server time in EVALSHA (scripts included)."
    )


async def delete_prefix(client: Redis, prefix: str) -> int:
    """Delete every key under `prefix`; returns how many."""
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    for start in range(0, len(keys), 500):
        await client.delete(*keys[start : start + 500])
    return len(keys)


async def main(args: argparse.Namespace) -> None:
    prefix = f"bench:{uuid.uuid4().hex[:12]}:"
    settings = Settings(
        redis_url=args.redis_url, redis_key_prefix=prefix, redis_timeout_s=args.redis_timeout_s
    )
    limiter, redis_limiter = make_limiter(settings, SystemClock())
    assert isinstance(limiter, FailoverLimiter)
    assert redis_limiter is not None
    tasks = SettleWatch()
    ctx: dict[str, Any] = {
        "limiter": limiter,
        "admitter": Admitter(
            limiter, default_output_tokens=settings.default_output_tokens, tasks=tasks
        ),
        "tasks": tasks,
        "principal": bench_principal(f"bench-{uuid.uuid4().hex[:8]}"),
        "stats": Redis.from_url(args.redis_url),
    }
    rng = random.Random(42)
    serial = iter(range(10**9))
    try:
        if not await redis_limiter.warm_up():
            raise SystemExit(f"error: Redis at {args.redis_url} is unavailable")
        # Warm-up: load the tokenizer, open `concurrency` connections, run the scripts once.
        warm = [chat_body(rng, next(serial)) for _ in range(max(200, args.concurrency * 4))]
        await limiter_phase("warm-up", warm.__getitem__, _with(args, len(warm)), ctx)

        fresh = [chat_body(rng, next(serial)) for _ in range(args.requests)]
        tokenizer, prompt_tokens = tokenizer_phase(fresh)
        conversations, conversation_tokens = tokenizer_phase(
            conversation_bodies(rng, serial, args.requests), "tokenizer, growing conversations"
        )
        print(f"growing conversations: mean prompt {conversation_tokens:.0f} tokens")
        cached = fresh[-CACHED_BODIES:]  # the most recently counted: still in the LRU
        with_cache = await limiter_phase(
            "admit+settle, count cached", lambda i: cached[i % len(cached)], args, ctx
        )
        new = [chat_body(rng, next(serial)) for _ in range(args.requests)]
        full = await limiter_phase("admit+settle, full", new.__getitem__, args, ctx)
        print_table([tokenizer, conversations, with_cache, full], args, prompt_tokens)
    finally:
        await tasks.drain()
        deleted = await delete_prefix(ctx["stats"], prefix)
        print(f"deleted {deleted} keys under {prefix!r}")
        await ctx["stats"].aclose()
        await redis_limiter.aclose()


def _with(args: argparse.Namespace, requests: int) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "requests": requests})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--requests", type=int, default=5000, help="requests per phase")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    parser.add_argument(
        "--redis-timeout-s",
        type=float,
        default=Settings.model_fields["redis_timeout_s"].default,
        help="the limiter's Redis timeout (default: the gateway's, GATEWAY_REDIS_TIMEOUT_S)",
    )
    return parser


def run() -> None:
    args = _parser().parse_args()
    if args.requests < 1 or args.concurrency < 1:
        raise SystemExit("error: --requests and --concurrency must be >= 1")
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(args))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main(args))


if __name__ == "__main__":
    run()
