"""Instructions per request (valgrind's callgrind): compare code revisions on a noisy machine.

    .venv/bin/python loadtests/instructions.py                   # HEAD against the working tree
    .venv/bin/python loadtests/instructions.py 1204865 HEAD      # any git revisions, in order
    .venv/bin/python loadtests/instructions.py --runs 2 HEAD     # the same code twice: the noise

Why: on this shared VM the CPU time of the same code moves by 10-30 % between two runs minutes
apart (and 2-3x between days), so a change worth 3 % cannot be seen in `bench.py`. Callgrind
counts the user-space instructions the gateway process executes, which do not depend on what
else the machine is doing: two runs of the same code agree within about 1 %.

What it runs: the Redis-mode gateway of each revision (a `git worktree` of it; "worktree" means
the files as they are), with every feature on as in `bench.py` (limits, budget, prices, metrics,
access log, a standalone ledger writer, a private redis-server and a Postgres database of its
own, both removed afterwards), under `valgrind --tool=callgrind --instr-atstart=no`. After a
warm-up it switches instrumentation on (`callgrind_control`), sends `--requests` non-streamed
chats with a new ~500-token prompt each, one at a time on `--connections` keep-alive
connections, and switches it off again: the count covers those requests only, start-up and
warm-up excluded, background tasks (health checks, log flushes) included.

What it does not show: time spent in the kernel (system calls, wake-ups), cache misses, and
anything that depends on concurrency batching; `bench.py` measures those. Read a difference
below about 1.5 % as none. Requires valgrind (`apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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
    redis_mode_stack,
    wait_for_port,
)

WORKTREE = "worktree"
TENANT = TenantSpec("instructions", rpm=10_000_000, tpm=2_000_000_000)
COMPLETION_TOKENS = 48


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "revisions", nargs="*", help=f"git revisions, or {WORKTREE!r} (default: HEAD {WORKTREE})"
    )
    parser.add_argument("--requests", type=int, default=300, help="counted requests per run")
    parser.add_argument("--warmup", type=int, default=100, help="uncounted requests first")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1, help="runs of each revision")
    parser.add_argument("--prompt-tokens", type=int, default=500)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    args.revisions = args.revisions or ["HEAD", WORKTREE]
    return args


def checkout(revision: str, into: Path) -> Path:
    """The source tree of `revision`: the working tree itself, or a detached worktree."""
    if revision == WORKTREE:
        return ROOT
    path = into / revision.replace("/", "_")
    if not path.exists():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), revision],
            check=True,
        )
    return path


async def drive(
    port: int, make: client.RequestFactory, numbers: Iterator[int], requests: int, connections: int
) -> None:
    """`requests` in all, one at a time on each of `connections` connections; all must be 200."""

    async def one_connection(count: int) -> None:
        conn = await client.connect(port)
        try:
            for _ in range(count):
                sample = await conn.request(make(next(numbers)))
                if sample.status != 200:
                    raise RuntimeError(f"status {sample.status}")
        finally:
            conn.close()

    share = max(1, requests // connections)
    await asyncio.gather(*[one_connection(share) for _ in range(connections)])


def total_instructions(out: Path) -> int:
    """The instruction total of a callgrind dump (the largest `totals:` of its parts)."""
    total = 0
    for part in out.parent.glob(out.name + "*"):
        for line in part.read_text().splitlines():
            if line.startswith(("totals:", "summary:")):
                total = max(total, int(line.split()[1]))
    return total


def count(
    procs: Processes,
    source: Path,
    env: dict[str, str],
    key: str,
    args: argparse.Namespace,
    label: str,
) -> float:
    """Millions of instructions per request of the gateway in `source`."""
    out = procs.logdir / f"callgrind-{label}.out"
    port = free_port()
    boot = f"import sys; sys.path.insert(0, {str(source)!r}); from gateway.cli import main; main()"
    command = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
        PYTHON, "-c", boot, "serve", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    proc = procs.start(f"gateway-{label}", command, env)
    try:
        wait_for_port(port, 600, proc)
        host = f"127.0.0.1:{port}"
        payload = chat_payload(words_for_tokens(args.prompt_tokens))
        make = request_factory(payload, "/v1/chat/completions", host, key)
        numbers = itertools.count(1)  # a new prompt for every request, warm-up included
        asyncio.run(drive(port, make, numbers, args.warmup, args.connections))
        control = ["callgrind_control"]
        subprocess.run([*control, "--instr=on", str(proc.pid)], check=True, capture_output=True)
        asyncio.run(drive(port, make, numbers, args.requests, args.connections))
        subprocess.run([*control, "--instr=off", str(proc.pid)], check=True, capture_output=True)
        subprocess.run([*control, "--dump", str(proc.pid)], check=True, capture_output=True)
        deadline = time.monotonic() + 30
        while (total := total_instructions(out)) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        procs.stop(proc)
    return total / args.requests / 1e6


def main() -> None:
    args = parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    workdir = Path(tempfile.mkdtemp(prefix="gateway-instructions-"))
    procs = Processes(workdir)
    clean_up_on_sigterm()
    sources = {revision: checkout(revision, workdir / "trees") for revision in args.revisions}
    try:
        payload = chat_payload(words_for_tokens(args.prompt_tokens))
        stack = redis_mode_stack(
            procs, workdir, args.postgres_url, TENANT,
            prompt_tokens=prompt_tokens(payload), completion_tokens=COMPLETION_TOKENS,
        )  # fmt: skip
        with stack as ready:
            print(
                f"| revision | M instructions / request ({args.requests} requests, "
                f"{args.connections} connection(s)) | vs first |\n|---|---:|---:|",
                flush=True,
            )
            first: float | None = None
            for run in range(args.runs):
                for revision, source in sources.items():
                    label = f"{run}-{revision}"
                    per_request = count(procs, source, ready.env, ready.key, args, label)
                    first = per_request if first is None else first
                    change = (per_request / first - 1) * 100
                    print(f"| {revision} | {per_request:.3f} | {change:+.1f} % |", flush=True)
    finally:
        procs.stop_all()
        for source in sources.values():
            if source != ROOT:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(source)],
                    check=False,
                )
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
