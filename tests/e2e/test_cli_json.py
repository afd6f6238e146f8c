"""``--json`` on every command that reports something: stdout is then exactly one JSON document
(or, for the followers, one JSON object per line), against a real broker process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from tests.e2e.broker_fixture import Broker, running_broker
from weightvault.cli.main import cli

pytestmark = pytest.mark.e2e

# Commands that report nothing to parse: servers, the shell script, a sandboxed command, and
# two that print a document already (custody status, approval policy show print JSON always;
# admin audit prints JSON lines).
NOT_REPORTING = {
    "audit serve",
    "broker serve",
    "completion",
    "gateway serve",
    "sandbox",
    "serve",
    "witness serve",
    "custody status",
    "approval policy",
    "admin audit",
}


def _leaves(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _leaves(command, (*path, name))
        else:
            yield " ".join((*path, name)), command


def test_every_reporting_command_takes_json() -> None:
    missing = [
        name
        for name, command in _leaves(cli)
        if name not in NOT_REPORTING and not any(p.name == "as_json" for p in command.params)
    ]
    assert missing == []


def wv_json(*args: str | Path, token: str | None = None, url: str | None = None) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    if token is not None:
        env["WEIGHTVAULT_TOKEN"] = token
    if url is not None:
        env["WEIGHTVAULT_BROKER"] = url
    done = subprocess.run(
        [sys.executable, "-m", "weightvault", *map(str, args), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, f"weightvault {args}: exit {done.returncode}: {done.stderr}"
    return json.loads(done.stdout)  # one document, nothing else on stdout


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    import numpy as np
    from safetensors.numpy import save_file

    tmp = tmp_path_factory.mktemp("json")
    plain = tmp / "small.safetensors"
    save_file({"a": np.arange(100, dtype=np.float32)}, str(plain))
    with running_broker(tmp, plain) as running:
        yield running


def test_broker_administration_reports_json(broker: Broker, tmp_path: Path) -> None:
    op = {"token": broker.tokens["operator"], "url": broker.url}
    assert wv_json("admin", "tenant", "create", "initech", **op) == {"tenant": "initech", "created": True}
    assert {"acme", "globex", "initech"} <= set(wv_json("admin", "tenant", "list", **op)["tenants"])
    made = wv_json("admin", "principal", "initech-aud", "--role", "auditor", "--tenant", "initech", **op)
    assert (made["principal"], made["role"], made["tenant"]) == ("initech-aud", "auditor", "initech")
    assert made["token"]  # shown once, as without --json
    saved = wv_json(
        "admin", "principal", "initech-pub", "--role", "publisher", "--tenant", "initech",
        "--out", tmp_path / "pub.token", **op,
    )  # fmt: skip
    assert "token" not in saved
    assert saved["token_file"] == str(tmp_path / "pub.token")
    added = wv_json("admin", "device", "add", "dev-9", "--kind", "insecure-sample", "--tenant", "initech", **op)
    assert added == {"device": "dev-9", "action": "add", "done": True}
    devices = wv_json("admin", "device", "list", **op)["devices"]
    assert [d["tenants"] for d in devices if d["id"] == "dev-9"] == [["initech"]]
    policies = wv_json("admin", "policy", "list", "acme", **op)
    assert [p["name"] for p in policies["policies"]] == ["open"]
    assert wv_json("approval", "list", **op) == {"requests": []}
    hold = wv_json("sentinel", "hold", "device", "dev-9", "--rule", "manual", **op)
    assert hold["kind"] == "device"
    assert hold["target"] == "dev-9"
    assert wv_json("sentinel", "lift", hold["hold"], **op) == {"hold": hold["hold"], "lifted": True}
    assert wv_json("device", "revoke", "dev-9", **op) == {"device": "dev-9", "revoked": True}


def test_gateway_keys_report_json_and_list_no_secret(broker: Broker) -> None:
    config = broker.base / "broker.toml"
    made = wv_json("gateway", "key", "create", "--config", config, "--tenant", "acme", "--principal", "acme-wl")
    assert made["key"]
    listed = wv_json("gateway", "key", "list", "--config", config, "--tenant", "acme")["keys"]
    assert [k["id"] for k in listed] == [made["id"]]
    assert made["key"] not in json.dumps(listed)
    revoked = wv_json("gateway", "key", "revoke", "--config", config, made["id"])
    assert (revoked["id"], revoked["revoked"]) == (made["id"], True)


def test_audit_and_key_commands_report_json(broker: Broker, tmp_path: Path) -> None:
    exported = wv_json("audit", "export", "--db", broker.audit_path, "--out", tmp_path / "e.jsonl", "--format", "jsonl")
    lines = (tmp_path / "e.jsonl").read_text().splitlines()
    assert exported["events"] == len(lines) > 0
    log_key = wv_json("audit", "keygen", "test/log", tmp_path / "log.key")
    assert (tmp_path / "log.key.vkey").read_text().strip() == log_key["vkey"]
    assert "PRIVATE" not in json.dumps(log_key)
    witness = wv_json("witness", "keygen", "w1", tmp_path / "w.key")
    assert witness["vkey"].startswith("w1+")
    person = wv_json("person", "keygen", "alice", "--out", tmp_path / "alice.key", "--no-passphrase")
    assert (person["person"], person["passphrase"]) == ("alice", False)
    assert Path(person["public_key"]).is_file()
    made = wv_json("broker", "init", tmp_path / "b2")
    assert made["config"] == str(tmp_path / "b2" / "broker.toml")
    assert (made["custody"], made["insecure_sample"]) == (None, False)
    assert (tmp_path / "b2" / "keys" / "audit-log.key.vkey").read_text().strip() == made["audit_log_vkey"]


def test_monitor_and_sentinel_print_json(broker: Broker, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "weightvault", "audit", "monitor", "--db", str(broker.audit_path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    objects = [json.loads(line) for line in done.stdout.splitlines()]
    assert objects[-1]["summary"]["entries"] > 0
    assert done.returncode == (40 if objects[-1]["summary"]["violations"] else 0)
    rules = wv_json("sentinel", "rules")
    assert len(rules["rules"]) > 5
    assert rules["source_digest"]
    scenario = wv_json("sentinel", "simulate", "--out", tmp_path / "sim", "--days", "14")
    assert scenario["events"] == len((tmp_path / "sim" / "events.jsonl").read_text().splitlines())
