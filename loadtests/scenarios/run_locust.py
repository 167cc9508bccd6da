"""The one headless command for the locust scenarios: stack up, run, write CSV/HTML and charts.

    .venv/bin/python loadtests/scenarios/run_locust.py                      # realistic timing, 2 min
    .venv/bin/python loadtests/scenarios/run_locust.py --timing fixed --users 40 --run-time 60s
    .venv/bin/python loadtests/scenarios/run_locust.py --backend redis      # Redis + Postgres mode

It starts the SIMULATED upstream (`gateway simulate --style mistral`) in one of two timings:

    fixed       answers at once (ttft 0, no token delay, 16 output tokens): the gateway's own
                cost dominates, the way a cache or a very fast model would make it
    realistic   ttft 250 ms, 15 ms per token, 64 output tokens: streams last ~1.2 s, as with
                a hosted model under load; concurrency builds up the way it does in production

then the gateway (`gateway serve`, embedded by default; `--backend redis` uses a private
redis-server and a throwaway Postgres database), and three tenants with different limits, each
with a monthly budget:

    team-chat      interactive mix, weight 5, 3,000 RPM, 2,000,000 TPM  (rarely limited)
    team-support   support mix,     weight 3,   600 RPM,   400,000 TPM  (limited at peaks)
    team-batch     batch mix,       weight 2,    30 RPM,    60,000 TPM  (often limited: 429s)

and runs `locust -f loadtests/locustfile.py --headless` against it. Everything lands in
`--out` (default `loadtests/results/<timing>-<backend>-<time>/`):

    locust_stats.csv, locust_stats_history.csv, locust_failures.csv, locust_exceptions.csv
    report.html          locust's report, with its own charts
    locust_charts.svg    our charts: req/s (answers, 429s, failures), latency, TTFT, users,
                         and p50/p95/p99 per request kind
    metrics.txt          the gateway's /metrics at the end (limiter decisions, tokens, cost)
    summary.md           the stats table, as printed at the end

Bounded: locust stops after `--run-time`; every process started here is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scenarios import charts
from scenarios.stack import (
    PYTHON,
    ROOT,
    Processes,
    TenantSpec,
    bootstrap,
    create_database,
    drop_database,
    free_port,
    gateway_env,
    routing_file,
    start_gateway,
    start_ledger_writer,
    start_private_redis,
    wait_for_port,
)

TIMINGS = {
    "fixed": {"ttft_ms": 0, "token_delay_ms": 0, "output_tokens": 16},
    "realistic": {"ttft_ms": 250, "token_delay_ms": 15, "output_tokens": 64},
}
TENANTS = [
    (TenantSpec("team-chat", rpm=3000, tpm=2_000_000, budget="5000"), 5, "interactive"),
    (TenantSpec("team-support", rpm=600, tpm=400_000, budget="2000"), 3, "support"),
    (TenantSpec("team-batch", rpm=30, tpm=60_000, budget="500"), 2, "batch"),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timing", choices=sorted(TIMINGS), default="realistic")
    parser.add_argument("--backend", choices=("embedded", "redis"), default="embedded")
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--spawn-rate", type=float, default=10)
    parser.add_argument("--run-time", default="2m", help="locust's -t, e.g. 90s, 2m")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "loadtests" / "results" / f"{args.timing}-{args.backend}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-locust-"))
    procs = Processes(workdir)
    database_url = None
    ok = False
    try:
        timing = TIMINGS[args.timing]
        sim_port = free_port()
        sim = procs.start(
            "simulator",
            [PYTHON, "-m", "gateway", "simulate", "--port", str(sim_port), "--style", "mistral",
             "--ttft-ms", str(timing["ttft_ms"]), "--token-delay-ms", str(timing["token_delay_ms"]),
             "--output-tokens", str(timing["output_tokens"])],
        )  # fmt: skip
        wait_for_port(sim_port, 60, sim)
        config = routing_file(workdir / "routing.yaml", f"http://127.0.0.1:{sim_port}")
        if args.backend == "redis":
            redis_url = start_private_redis(procs, None)
            if redis_url is None:
                raise SystemExit("--backend redis needs redis-server on PATH")
            database_url = create_database(args.postgres_url)
            env = gateway_env(workdir, config, database_url=database_url, redis_url=redis_url)
        else:
            env = gateway_env(workdir, config)
        keys = bootstrap(env, [spec for spec, _, _ in TENANTS])
        if args.backend == "redis":
            start_ledger_writer(procs, "ledger-writer", env, None)
        _, base_url = start_gateway(procs, "gateway", env, None)
        tenants_file = workdir / "tenants.json"
        tenants_file.write_text(
            json.dumps(
                [
                    {"name": spec.name, "key": keys[spec.name], "weight": w, "profile": profile}
                    for spec, w, profile in TENANTS
                ]
            )
        )
        print(
            f"SIMULATED upstream ({args.timing}: {timing}) on :{sim_port}; gateway "
            f"({args.backend}) on {base_url}; locust: {args.users} users for {args.run_time}",
            flush=True,
        )
        prefix = out / "locust"
        locust = Path(sys.executable).with_name("locust")
        command = [
            str(locust), "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless",
            "-u", str(args.users), "-r", str(args.spawn_rate), "-t", args.run_time,
            "--stop-timeout", "10", "--host", base_url, "--tenants-file", str(tenants_file),
            "--csv", str(prefix), "--csv-full-history", "--html", str(out / "report.html"),
            "--only-summary",
        ]  # fmt: skip
        run = procs.start("locust", command)
        run.wait(timeout=_seconds(args.run_time) + 120)
        with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as response:
            (out / "metrics.txt").write_bytes(response.read())
        title = (
            f"Gateway ({args.backend}) behind the SIMULATED upstream ({args.timing} timing): "
            f"{args.users} users, {args.run_time}"
        )
        chart = charts.render(prefix, title)
        summary = summarise(prefix)
        (out / "summary.md").write_text(title + "\n\n" + summary + "\n")
        print(summary)
        print(f"\nwritten to {out}: report.html, {chart.name}, locust_*.csv, metrics.txt")
        ok = run.returncode in (0, 1)  # 1: locust saw failures (e.g. 429s after retries)
    finally:
        procs.stop_all()
        if database_url is not None:
            drop_database(args.postgres_url, database_url)
        if not ok or args.keep:
            print(f"logs (locust.log, gateway.log, ...) kept in {workdir}", file=sys.stderr)


def _seconds(text: str) -> float:
    """locust's -t format (`90`, `90s`, `2m`, `1h30m`) in seconds."""
    total, number = 0.0, ""
    for char in text.strip():
        if char.isdigit() or char == ".":
            number += char
        else:
            total += float(number or 0) * {"h": 3600, "m": 60, "s": 1}[char]
            number = ""
    return total + float(number or 0)


def summarise(prefix: Path) -> str:
    rows = charts.read_csv(Path(f"{prefix}_stats.csv"))
    lines = [
        "| type | name | requests | failures | req/s | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['Type']} | {r['Name']} | {r['Request Count']} | {r['Failure Count']} "
            f"| {float(r['Requests/s']):.1f} | {r['50%']} | {r['95%']} | {r['99%']} "
            f"| {float(r['Max Response Time']):.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
