"""Where the gateway's CPU goes under load: py-spy samples, folded into hot-spot tables.

py-spy (`pip install py-spy` into the venv that runs the bench; it is bench tooling, not a
project dependency) attaches to the running gateway by pid and samples its Python stacks,
pausing it for each sample (with `--nonblocking` many stacks come back truncated, which ruins
inclusive times; pausing costs the gateway ~20% of its throughput while sampled, but not CPU
per request). Idle samples (the event loop waiting in epoll, pool threads waiting for work)
are left out, so shares are of the time the process was busy. We read py-spy's "raw" output (folded
stacks: `frame;frame;frame count`) and report, per function:

- self: samples where it was the innermost Python frame (native code it calls counts here);
- inclusive: samples where it was anywhere on the stack (each stack counted once), for the
  gateway's own functions (framework frames above them say little);
- by package: self time grouped by the innermost frame's package (`sqlalchemy`, `redis`,
  `gateway/ledger`, ...);
- by gateway line: each sample charged to the innermost line of gateway code on its stack, so
  the time spent inside redis-py, tiktoken or aiohttp on behalf of a line counts for that line
  (the most direct answer to "which line of ours costs what").

Caveats: SQLAlchemy's async layer runs its work in greenlets, whose stacks py-spy sees apart
from the event loop's (they start at `Session.execute`), so the inclusive share of a caller
such as `LedgerWriter._write` misses them; the by-package table counts them. `Runner.run`
as innermost frame is native code under the event loop (uvloop, Cython protocols such as
asyncpg's), which py-spy cannot see into without `--native`.

`ms/req` turns a share into CPU milliseconds per request with the CPU per request measured
over the same run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from scenarios.stack import pinned

# Innermost frames of threads that wait for work (py-spy in blocking mode counts them busy).
_IDLE_LEAVES = (
    "_worker (concurrent/futures/thread.py",
    "wait (threading.py",
    "_wait_for_tstate_lock (threading.py",
    "get (queue.py",
)
_ENTRY_POINTS = ("gateway/__main__.py", "gateway/cli.py")  # on every stack: not an owner
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    """The py-spy executable beside this interpreter, or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record(
    executable: str, pid: int, duration_s: float, out: Path, core: int | None, rate_hz: int = 250
) -> subprocess.Popen:
    """Start sampling `pid` for `duration_s`; the caller drives load meanwhile, then waits."""
    args = [executable, "record", "--pid", str(pid), "--duration", str(int(duration_s)),
            "--rate", str(rate_hz), "--format", "raw", "--output", str(out)]  # fmt: skip
    return subprocess.Popen(pinned(core, args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@dataclass(frozen=True)
class HotSpot:
    name: str  # function (short file:line of the function's first sampled line)
    share: float  # of busy samples, 0..1


@dataclass(frozen=True)
class Profile:
    samples: int
    self_top: list[HotSpot]
    inclusive_top: list[HotSpot]  # gateway/ functions only: the rest is framework plumbing
    lines_top: list[HotSpot]
    packages: list[HotSpot]  # self time by the package of the innermost frame
    attributed: list[HotSpot]  # by the innermost gateway/ line, library time included


def package_of(path: str) -> str:
    """`sqlalchemy`, `gateway/ledger`, `asyncio`, ... for a shortened frame path."""
    if path.startswith("gateway/"):
        parts = path.split("/")
        return "/".join(parts[:2]) if len(parts) > 2 else "gateway"
    head = path.split("/", 1)[0]
    return head.removesuffix(".py") or path


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    if "/gateway/" in path:
        return "gateway/" + path.split("/gateway/", 1)[1]
    return path


def _short_frame(frame: str) -> str:
    match = _FRAME.match(frame)
    return f"{match['func']} ({_short(match['file'])}" if match else frame


def parse(raw: Path, top: int = 20) -> Profile:
    """Fold py-spy raw output into self, inclusive and per-line tables."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    attributed: Counter[str] = Counter()
    total = 0
    for row in raw.read_text().splitlines():
        stack, _, count_text = row.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames or _short_frame(frames[-1]).startswith(_IDLE_LEAVES):
            continue
        total += count
        attributed[_owner(frames)] += count
        seen: set[str] = set()
        for index, frame in enumerate(frames):
            match = _FRAME.match(frame)
            func, file, line = (
                (match["func"], _short(match["file"]), match["line"])
                if match
                else (frame, "", None)
            )
            name = f"{func} ({file})"
            if index == len(frames) - 1:
                self_counts[name] += count
                lines[f"{func} ({file}:{line})"] += count
                packages[package_of(file)] += count
            if file.startswith("gateway/") and name not in seen:
                seen.add(name)
                inclusive[name] += count
    if total == 0:
        return Profile(0, [], [], [], [], [])

    def table(counter: Counter[str]) -> list[HotSpot]:
        return [HotSpot(name, n / total) for name, n in counter.most_common(top)]

    return Profile(
        total,
        table(self_counts),
        table(inclusive),
        table(lines),
        table(packages),
        table(attributed),
    )


def _owner(frames: list[str]) -> str:
    """The innermost gateway line of a stack (what the gateway was doing, libraries included),
    or the innermost frames when no gateway code is on it (server and event loop plumbing)."""
    for frame in reversed(frames):
        match = _FRAME.match(frame)
        if match:
            file = _short(match["file"])
            if file.startswith("gateway/") and file not in _ENTRY_POINTS:
                return f"{match['func']} ({file}:{match['line']})"
    return "(no gateway frame) " + " < ".join(_short_frame(f) for f in reversed(frames[-2:]))
