"""``weightvault doctor`` against a real broker directory and a real serving broker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.databases import init_options
from tests.e2e.servers import serve_broker

pytestmark = pytest.mark.e2e


def wv(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weightvault", *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def test_doctor_checks_a_broker_and_its_configuration_and_says_what_to_fix(tmp_path: Path) -> None:
    base = tmp_path / "broker"
    assert 0 == wv("broker", "init", base, "--insecure-sample", *init_options()).returncode
    with serve_broker(base) as url:
        done = wv("doctor", "--config", base / "broker.toml", "--broker", url, "--json")
        assert 0 == done.returncode, done.stdout + done.stderr
        checks = {c["name"]: c for c in json.loads(done.stdout)}
        assert "ok" == checks["broker"]["status"]
        assert "ok" == checks["clock"]["status"]  # the same machine's clock: no skew
        assert "ok" == checks["database"]["status"]
        assert all(checks[f"key {k}"]["status"] == "ok" for k in ("root", "token_signing", "audit_log"))
        # An API token: whose, and when it expires (a warning within a week, a failure once past).
        op = ["--broker", url, "--token", f"@{base / 'operator.token'}"]
        assert "does not expire" in _token_check(wv("doctor", *op, "--json"))["detail"]
        assert 0 == wv("admin", "tenant", "create", "acme", *op).returncode
        for name, life in (("acme-wl", "2d"), ("acme-old", "1s")):
            made = wv("admin", "principal", name, "--role", "workload", "--tenant", "acme", "--expires-in", life,
                      "--out", tmp_path / name, *op)  # fmt: skip
            assert 0 == made.returncode, made.stderr
        soon = _token_check(wv("doctor", "--broker", url, "--token", f"@{tmp_path / 'acme-wl'}", "--json"))
        assert ("warn", True) == (soon["status"], "acme-wl (workload, tenant acme); it expires" in soon["detail"])
        assert "--rotate" in soon["fix"]
        time.sleep(1.5)
        done = wv("doctor", "--broker", url, "--token", f"@{tmp_path / 'acme-old'}", "--json")
        assert (60, "FAIL", "expired") == (done.returncode, *(_token_check(done)[k] for k in ("status", "detail")))
    root = base / "keys" / "root.key"
    root.chmod(0o644)
    bad = wv("doctor", "--config", base / "broker.toml", "--broker", url, "--json")
    assert 60 == bad.returncode
    status = {c["name"]: c["status"] for c in json.loads(bad.stdout)}
    assert ("FAIL", "FAIL", "ok") == (status["key root"], status["broker"], status["key audit_log"])  # broker: stopped
    assert "check(s) failed: broker, key root" in bad.stderr
    shown = wv("doctor", "--config", base / "broker.toml")
    assert f"fix: chmod 600 {root}" in shown.stdout


def _token_check(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return next(c for c in json.loads(done.stdout) if c["name"] == "api token")


def test_doctor_says_whether_this_is_a_confidential_vm(tmp_path: Path) -> None:
    from weightvault.cli.doctor import _confidential_vm

    absent = _confidential_vm(tmp_path / "tsm" / "report")
    assert (absent.status, "not a confidential VM" in absent.detail) == ("ok", True)
    (tmp_path / "tsm" / "report").mkdir(parents=True)
    present = _confidential_vm(tmp_path / "tsm" / "report")
    assert (present.status, "--attester snp or tdx can request reports" in present.detail) == ("ok", True)
