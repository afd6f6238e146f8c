"""Locations of sealed bytes: URL joining and display, and the local source's exact reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightvault.errors import ConfigError, PayloadError
from weightvault.sealing.sources import (
    LocalSource,
    S3Source,
    display,
    fetch_small,
    is_remote,
    join_location,
    open_source,
)


def test_only_http_https_and_s3_urls_are_remote(tmp_path: Path) -> None:
    for remote in ("https://h/m", "http://h/m", "s3://b/k"):
        assert is_remote(remote)
    for local in (tmp_path, "file:///x", "./http://x"):
        assert not is_remote(local)


_segment = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="/\x00"), min_size=1, max_size=12
).filter(lambda s: s not in (".", ".."))


@given(st.lists(_segment, min_size=1, max_size=4))
def test_joined_urls_quote_every_segment_and_stay_under_the_base(parts: list[str]) -> None:
    """A manifest path never escapes its base or injects a query, fragment or another host."""
    url = join_location("https://h.example/models/m/", "/".join(parts))
    assert isinstance(url, str)
    assert url.startswith("https://h.example/models/m/")
    tail = url[len("https://h.example/models/m/") :]
    assert "?" not in tail
    assert "#" not in tail
    assert tail.count("/") == len(parts) - 1


@pytest.mark.parametrize("relative", ["../x", "a/../../x", "./x", "a//b", "/etc/passwd", ""])
def test_joins_refuse_dot_segments_and_absolute_paths(relative: str) -> None:
    with pytest.raises(ValueError, match="relative path"):
        join_location("https://h.example/m", relative)


def test_local_joins_are_paths(tmp_path: Path) -> None:
    assert tmp_path / "a" / "b.wvlt" == join_location(tmp_path, "a/b.wvlt")


def test_display_drops_credentials_and_queries() -> None:
    shown = display("https://user:secret@h.example:8443/m/x.wvlt?X-Amz-Signature=abc")
    assert "https://h.example:8443/m/x.wvlt" == shown
    assert "secret" not in shown
    assert "abc" not in shown


def test_a_local_source_reads_exactly_or_says_truncated(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(100)))
    source = open_source(path)
    assert isinstance(source, LocalSource)
    try:
        assert 100 == source.size
        buf = bytearray(10)
        source.read_into(memoryview(buf), 90, "short")
        assert bytes(range(90, 100)) == bytes(buf)
        with pytest.raises(PayloadError, match="short"):
            source.read_into(memoryview(bytearray(11)), 90, "short")
    finally:
        source.close()


def test_whole_file_fetches_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    assert b"x" * 100 == fetch_small(path, 100)
    with pytest.raises(PayloadError, match="larger"):
        fetch_small(path, 99)


def test_an_s3_location_needs_a_bucket_and_a_key() -> None:
    with pytest.raises(ConfigError, match="s3://BUCKET/KEY"):
        S3Source("s3://bucket-only")


def test_optional_drivers_missing_give_the_install_hint_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the s3 extra an s3:// location, and without the postgresql extra a PostgreSQL URL,
    is a configuration error that says what to install (a missing module is None in sys.modules)."""
    import sys

    from weightvault.broker.storage.database import libpq_conninfo

    for module in ("obstore", "obstore.store", "obstore.exceptions", "psycopg", "psycopg.conninfo"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ConfigError, match=r"weightvault\[s3\]"):
        S3Source("s3://bucket/model.wvlt")
    with pytest.raises(ConfigError, match=r"weightvault\[postgresql\]"):
        libpq_conninfo("postgresql://u@h/db")
