"""What the command groups share: reading key arguments and times into library objects."""

from __future__ import annotations

from pathlib import Path

import pytest

from weightvault import KEK, FileKey, HPKEIdentity, HPKEKem, write_key_file
from weightvault.cli.options import identities_from, parse_ms, parse_seconds, read_token, recipients_from
from weightvault.errors import ConfigError


def test_keys_become_recipients_and_identities(tmp_path: Path) -> None:
    kek, hpke, fk = KEK.generate(), HPKEIdentity.generate(HPKEKem.X25519), FileKey.generate()
    for name, key in (("k", kek), ("h", hpke), ("f", fk)):
        write_key_file(tmp_path / name, key)
    write_key_file(tmp_path / "h.pub", hpke.recipient)
    assert [kek.kid, hpke.recipient.kid] == [r.kid for r in recipients_from([tmp_path / "k", tmp_path / "h"], False)]  # type: ignore[attr-defined]
    assert fk == identities_from([tmp_path / "f"], False)
    with pytest.raises(ConfigError, match="public key"):
        identities_from([tmp_path / "h.pub"], False)
    with pytest.raises(ConfigError, match="cannot be a recipient"):
        recipients_from([tmp_path / "f"], False)
    with pytest.raises(ConfigError, match="no key given"):
        identities_from([], False)


def test_tokens_from_files_must_be_private(tmp_path: Path) -> None:
    token = tmp_path / "t"
    token.write_text("wv1_a.b\n")
    token.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_token(f"@{token}")
    token.chmod(0o600)
    assert "wv1_a.b" == read_token(f"@{token}")


def test_times_are_iso_8601_or_refused() -> None:
    assert 1_767_225_600_000 == parse_ms("2026-01-01")
    assert parse_ms(None) is None
    with pytest.raises(ConfigError):
        parse_ms("yesterday")


def test_durations_are_a_whole_number_and_a_unit() -> None:
    assert [90, 900, 86400, 30 * 86400, None] == [parse_seconds(v) for v in ("90s", "15m", "24h", " 30D ", None)]
    for bad in ("soon", "0d", "-1d", "1.5h", "10", "d", "\u0661d", "9999999999d", ""):
        with pytest.raises(ConfigError, match="duration"):
            parse_seconds(bad)
