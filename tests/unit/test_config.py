"""Routing-file validation: every bad config in bad_configs/ fails with its expected message."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.settings import DEMO_CONFIG_PATH

BAD = sorted((Path(__file__).parent / "bad_configs").glob("*.yaml"))


def expected_message(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: ")
    return first.removeprefix("# expect: ")


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_config_names_the_problem(path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert expected_message(path) in message
    assert message.startswith(str(path))
    assert "sk-should-not-be-here" not in message  # a pasted secret is never echoed


def test_all_problems_reported_together(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(
        "deployments:\n  - {name: a, provider: x, base_url: 'ftp://h', region: r,"
        " jurisdiction: eu, models: {m: m}, extra: 1}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = str(caught.value).splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{path}: deployments[0:a].") for line in lines)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the routing file"):
        load_config(tmp_path / "absent.yaml")


def test_demo_config_is_valid_and_simulated() -> None:
    config = load_config(DEMO_CONFIG_PATH)
    assert config.simulator is not None
    assert "mistral-small-latest" in config.public_models()
