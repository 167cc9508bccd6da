"""`gateway tenants create … --rpm …` and `gateway limits set/show`, as a script would run them.

Each call is a real `python -m gateway` subprocess against this module's SQLite file, so the
output contract (tenant id on the last line, one line per limits row, exit 2 on bad input) is
what is tested. Tests share the file (one migration, ~1 s per call) and use their own tenants.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest

Gateway = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    tmp_path = tmp_path_factory.mktemp("cli")
    env = {**os.environ, "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert run("migrate").returncode == 0
    assert run("tenants", "create", "steady", "--rpm", "60").returncode == 0
    return run


def test_create_set_and_show(gateway: Gateway) -> None:
    created = gateway(
        "tenants", "create", "acme", "--rpm", "60", "--tpm", "1000", "--concurrency", "4"
    )
    assert created.returncode == 0, created.stderr
    tenant_id = created.stdout.strip().splitlines()[-1]
    assert str(uuid.UUID(tenant_id)) == tenant_id

    updated = gateway("limits", "set", "acme", "--model", "m1", "--tpm", "50")
    assert updated.returncode == 0, updated.stderr
    assert updated.stdout.strip().splitlines() == [
        "set limits of acme: model m1: rpm=unlimited tpm=50"
    ]

    shown = gateway("limits", "show", tenant_id)  # by id this time
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip().splitlines() == [
        "default: rpm=60 tpm=1000 concurrency=4",
        "model m1: rpm=unlimited tpm=50",
    ]


def test_a_tenant_without_limits_shows_unlimited(gateway: Gateway) -> None:
    assert gateway("tenants", "create", "free").returncode == 0
    shown = gateway("limits", "show", "free")
    assert shown.stdout.strip() == "free: no limits (unlimited)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("limits", "set", "steady", "--rpm", "0"), "--rpm: must be a positive integer, not 0"),
        (("limits", "set", "steady", "--tpm", "many"), "--tpm: 'many' is not an integer"),
        (("tenants", "create", "beta", "--concurrency", "-1"), "must be a positive integer"),
        (("limits", "set", "steady", "--model", "m1", "--concurrency", "2"), "tenant-wide"),
        (("limits", "set", "steady"), "Nothing to set"),
        (("limits", "set", "nobody", "--rpm", "1"), "No tenant with id or name 'nobody'"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    gateway: Gateway, args: tuple[str, ...], message: str
) -> None:
    result = gateway(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_a_refused_set_changes_nothing(gateway: Gateway) -> None:
    assert gateway("limits", "set", "steady", "--rpm", "1", "--rpm-burst", "0").returncode == 2
    assert gateway("limits", "set", "steady", "--model", "m9", "--concurrency", "2").returncode == 2
    shown = gateway("limits", "show", "steady")
    assert shown.stdout.strip() == "default: rpm=60 tpm=unlimited concurrency=unlimited"


def test_a_refused_limit_leaves_no_tenant_behind(gateway: Gateway) -> None:
    # The tenant and its limits are one transaction: a burst without its rate undoes both.
    refused = gateway("tenants", "create", "half", "--rpm-burst", "5")
    assert refused.returncode == 2
    assert "rpm_burst needs rpm" in refused.stderr
    assert gateway("limits", "show", "half").returncode == 2
