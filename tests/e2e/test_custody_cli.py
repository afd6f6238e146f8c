"""The custody and approval command line as people use it: keygen, genesis of a running broker, unseal, sign."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.databases import init_options
from tests.e2e.broker_fixture import wv
from tests.e2e.servers import serve_broker

pytestmark = pytest.mark.e2e


def _fails(*args: str | Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "weightvault", *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode != 0
    assert 1 <= len(proc.stderr.strip().splitlines()) <= 2  # one line, and maybe a hint
    return proc


def test_migrate_to_custody_unseal_and_approve_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEIGHTVAULT_PASSPHRASE", "correct horse battery staple")
    for name in ("ann", "ben", "cat", "alice", "bob"):
        assert "passphrase-protected" in wv("person", "keygen", name, "--out", tmp_path / f"{name}.key")
    assert b"signing" not in (tmp_path / "ann.key").read_bytes().replace(b'"kind"', b"")
    base = tmp_path / "broker"
    wv("broker", "init", base, "--insecure-sample", *init_options())
    out = wv(
        "custody",
        "genesis",
        "--config",
        base / "broker.toml",
        "--threshold",
        "2",
        *[a for n in ("ann", "ben", "cat") for a in ("--custodian", str(tmp_path / f"{n}.key.pub"))],
    )
    assert "deleted" in out
    assert not (base / "keys" / "root.key").exists()
    assert 'root = "custody"' in (base / "broker.toml").read_text()
    share_dir = next((base / "custody").iterdir())
    _fails(
        "custody",
        "genesis",
        "--config",
        base / "broker.toml",
        "--threshold",
        "2",
        "--custodian",
        tmp_path / "ann.key.pub",
        "--custodian",
        tmp_path / "ben.key.pub",
    )
    with serve_broker(base) as url:
        monkeypatch.setenv("WEIGHTVAULT_BROKER", url)
        op = ["--token", f"@{base / 'operator.token'}"]
        assert json.loads(wv("custody", "status", *op))["sealed"] is True
        sealed_err = _fails("admin", "tenant", "create", "acme", *op)
        assert "sealed" in sealed_err.stderr
        assert "weightvault custody open unseal" in sealed_err.stderr  # a command that exists
        ceremony = wv("custody", "open", "unseal", *op).split()[1]
        wrong = _fails(
            "custody", "submit", ceremony, "--key", tmp_path / "ben.key", "--share", share_dir / "ann.share", "--yes"
        )
        assert "ann's share" in wrong.stderr
        no_confirm = _fails(
            "custody", "submit", ceremony, "--key", tmp_path / "ann.key", "--share", share_dir / "ann.share"
        )
        assert "--yes" in no_confirm.stderr
        assert "1 of 2" in wv(
            "custody", "submit", ceremony, "--key", tmp_path / "ann.key", "--share", share_dir / "ann.share", "--yes"
        )
        assert "done" in wv(
            "custody", "submit", ceremony, "--key", tmp_path / "cat.key", "--share", share_dir / "cat.share", "--yes"
        )
        wv("admin", "tenant", "create", "acme", *op)
        # Approvals: alice and bob are approvers; a policy change needs both.
        tokens = {}
        for name in ("alice", "bob"):
            token_file = tmp_path / f"{name}.token"
            wv("admin", "principal", name, "--role", "approver", "--out", token_file, *op)
            tokens[name] = ["--token", f"@{token_file}"]
        policy: dict[str, Any] = {
            "approvers": {
                n: {
                    k: v
                    for k, v in json.loads((tmp_path / f"{n}.key.pub").read_text()).items()
                    if k in ("signing", "hpke")
                }
                for n in ("alice", "bob")
            },
            "groups": {"sec": ["alice", "bob"]},
            "rules": [{"op": "approval.policy.change", "require": [{"group": "sec", "count": 2}]}],
        }
        (tmp_path / "approvals.json").write_text(json.dumps(policy))
        assert "version 1" in wv("approval", "policy", "put", tmp_path / "approvals.json", *op)
        policy["rules"].append({"op": "key.export", "require": [{"group": "sec", "count": 2}]})
        (tmp_path / "approvals.json").write_text(json.dumps(policy))
        needs = _fails("approval", "policy", "put", tmp_path / "approvals.json", *op)
        assert "needs approval" in needs.stderr
        opened = _fails("approval", "policy", "put", tmp_path / "approvals.json", "--approval", "new", *op)
        request_id = opened.stderr.split("approval request ")[1].split()[0].rstrip(";")
        shown = wv("approval", "show", request_id, *tokens["alice"])
        assert "approval.policy.change" in shown
        assert "request digest" in shown
        assert "pending" in wv(
            "approval", "sign", request_id, "--key", tmp_path / "alice.key", "--yes", *tokens["alice"]
        )
        assert "approved" in wv("approval", "sign", request_id, "--key", tmp_path / "bob.key", "--yes", *tokens["bob"])
        assert "version 2" in wv(
            "approval", "policy", "put", tmp_path / "approvals.json", "--approval", request_id, *op
        )
        assert request_id in wv("approval", "list", "--status", "executed", *tokens["bob"])
        assert "broker sealed" in wv("custody", "seal", *op)
        assert json.loads(wv("custody", "status", *op))["sealed"] is True
