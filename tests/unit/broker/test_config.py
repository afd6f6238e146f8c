"""BrokerConfig: every default in one place, and every bad value one clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from weightvault.broker.config import DEFAULTS, BrokerConfig
from weightvault.errors import ConfigError

MINIMAL: dict[str, Any] = {"broker": {}, "storage": {}, "keys": {}}


def _parse(**sections: Any) -> BrokerConfig:
    doc = {k: dict(v) for k, v in MINIMAL.items()}
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    return BrokerConfig.from_mapping(doc, Path("/etc/wv/broker.toml"))


def test_defaults_fill_what_is_not_said() -> None:
    config = _parse()
    assert (DEFAULTS.port, DEFAULTS.challenge_ttl_seconds, DEFAULTS.token_ttl_seconds) == (
        config.port,
        config.challenge_ttl_seconds,
        config.token_ttl_seconds,
    )
    assert "sqlite:////etc/wv/data/broker.db" == config.database_url
    assert Path("/etc/wv/keys/root.key") == config.path(config.keys.root)


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("broker", {"token_ttl_seconds": 600}, "token_ttl_seconds = 600: must be an integer from 1 to 300"),
        ("broker", {"challenge_ttl_seconds": 120}, "challenge_ttl_seconds = 120"),
        ("broker", {"rate_per_second": "fast"}, "rate_per_second = 'fast': must be a number"),
        ("broker", {"port": True}, "port = True"),
        ("broker", {"rate_per_secnd": 5}, "unknown key(s) in [broker]: rate_per_secnd"),
        ("storage", {"audit_db": 7}, "audit_db = 7"),
        ("audit", {"quorum": 1}, "quorum = 1: must be an integer from 0 to 0"),
        ("tls", {"cert": "c.pem"}, "needs both cert and key"),
        ("verifiers", {"allow": "tpm"}, "allow = 'tpm': must be a list of strings"),
        ("principals", {"token_max_age_days": {"operator": 90}}, "cannot name operator"),
        ("principals", {"token_max_age_days": {"robot": 90}}, "unknown key(s) in [principals.token_max_age_days]"),
        ("principals", {"token_max_age_days": {"workload": 0}}, "workload = 0: must be a number from 0.001"),
        ("principals", {"token_max_age_days": {"workload": "90d"}}, "workload = '90d'"),
        ("principals", {"token_max_age_days": 90}, "[token_max_age_days] must be a table"),
    ],
)
def test_bad_values_name_the_file_the_key_and_the_rule(section: str, values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(**{section: values})
    assert message in str(info.value)
    assert "/etc/wv/broker.toml" in str(info.value)


def test_token_max_ages_are_per_role_and_optional() -> None:
    assert {} == _parse().token_max_age_days
    config = _parse(principals={"token_max_age_days": {"workload": 90, "sentinel": 0.5}})
    assert {"workload": 90.0, "sentinel": 0.5} == config.token_max_age_days


def test_missing_sections_and_unknown_ones() -> None:
    with pytest.raises(ConfigError, match=r"missing section \[keys\]"):
        BrokerConfig.from_mapping({"broker": {}, "storage": {}}, Path("b.toml"))
    with pytest.raises(ConfigError, match="unknown key"):
        BrokerConfig.from_mapping({**MINIMAL, "extra": {}}, Path("b.toml"))
