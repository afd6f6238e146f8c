"""Host buffers: huge pages where they pay, 4 KiB pages where the host reclaims free memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from weightvault.errors import ConfigError
from weightvault.loaders import _host

# The virtio balloon's sysfs feature string: one character per feature bit, bit 5 is free page reporting.
REPORTING = "011001" + "0" * 58
NO_REPORTING = "011000" + "0" * 58


@pytest.fixture
def balloon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    device = tmp_path / "virtio0"
    device.mkdir()
    monkeypatch.setattr(_host, "_BALLOON_FEATURES", str(tmp_path / "virtio*" / "features"))
    monkeypatch.delenv("WEIGHTVAULT_HUGEPAGES", raising=False)
    _host._host_reclaims_free_pages.cache_clear()
    yield device / "features"
    _host._host_reclaims_free_pages.cache_clear()


@pytest.mark.parametrize(("features", "huge"), [(REPORTING, False), (NO_REPORTING, True), (None, True)])
def test_auto_avoids_huge_pages_only_under_free_page_reporting(balloon: Path, features: str | None, huge: bool) -> None:
    if features is not None:
        balloon.write_text(features + "\n")
    assert _host.huge_pages_pay() is huge


def test_the_environment_overrides_detection(balloon: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    balloon.write_text(REPORTING)
    monkeypatch.setenv("WEIGHTVAULT_HUGEPAGES", "1")
    assert _host.huge_pages_pay() is True
    monkeypatch.setenv("WEIGHTVAULT_HUGEPAGES", "0")
    balloon.write_text(NO_REPORTING)
    assert _host.huge_pages_pay() is False


def test_a_bad_setting_is_a_config_error(balloon: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEIGHTVAULT_HUGEPAGES", "yes please")
    with pytest.raises(ConfigError, match="WEIGHTVAULT_HUGEPAGES"):
        _host.huge_pages_pay()


def test_buffers_are_zeroed_owned_and_have_tag_slack(balloon: Path) -> None:
    for size in (0, 100, _host.HUGE_THRESHOLD + 1):
        buf = _host.host_buffer(size)
        assert len(buf) == size + 16
        assert bytes(buf[:64]) == bytes(min(64, size + 16))
