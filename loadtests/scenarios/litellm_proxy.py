"""LiteLLM proxy as a comparison target: installed into its own venv, pointed at our upstream.

The venv (default /tmp/bench-litellm-venv) is created on first use with `pip install
'litellm[proxy]'` from PyPI and reused afterwards. LiteLLM runs with a master key (its proxy
refuses to start without one, and our gateway authenticates too), no database, and
`LITELLM_LOCAL_MODEL_COST_MAP=True` so it never fetches its price map from the network.
The model is `openai/mistral-small-latest` with `api_base` on the bench upstream.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from pathlib import Path

import yaml

from scenarios.stack import Processes, free_port, pinned, wait_for_port

INSTALL_TIMEOUT_S = 900


def ensure_installed(venv: Path, log: Path) -> tuple[Path | None, str]:
    """The `litellm` executable in `venv`, installing it when missing; (path or None, note)."""
    executable = venv / "bin" / "litellm"
    if executable.exists():
        return executable, f"LiteLLM from {venv}"
    started = time.monotonic()
    try:
        with log.open("ab") as sink:
            if not (venv / "bin" / "python").exists():
                subprocess.run(
                    [sys.executable, "-m", "venv", str(venv)],
                    stdout=sink, stderr=subprocess.STDOUT, check=True, timeout=300,
                )  # fmt: skip
            subprocess.run(
                [str(venv / "bin" / "pip"), "install", "--quiet", "litellm[proxy]"],
                stdout=sink, stderr=subprocess.STDOUT, check=True, timeout=INSTALL_TIMEOUT_S,
            )  # fmt: skip
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"LiteLLM could not be installed into {venv} ({exc}); see {log}"
    if not executable.exists():
        return None, f"LiteLLM installed but {executable} is missing; see {log}"
    return executable, f"LiteLLM installed into {venv} in {time.monotonic() - started:.0f}s"


def version(venv: Path) -> str:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return done.stdout.strip() or "unknown"


def start(
    procs: Processes, executable: Path, upstream_url: str, workdir: Path, core: int | None
) -> tuple[subprocess.Popen, str, str]:
    """Run the LiteLLM proxy (one worker, pinned); (process, base URL, master key)."""
    master_key = "sk-" + secrets.token_hex(32)
    config = {
        "model_list": [
            {
                "model_name": "mistral-small-latest",
                "litellm_params": {
                    "model": "openai/mistral-small-latest",
                    "api_base": f"{upstream_url}/v1",
                    "api_key": "bench-upstream-needs-no-key",
                },
            }
        ],
        "litellm_settings": {"telemetry": False},
        "general_settings": {"master_key": master_key},
    }
    path = workdir / "litellm.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(workdir),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "PYTHONUNBUFFERED": "1",
    }
    args = [str(executable), "--config", str(path), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1"]  # fmt: skip
    proc = procs.start("litellm", pinned(core, args), env)
    wait_for_port(port, 180, proc)
    return proc, f"http://127.0.0.1:{port}", master_key
