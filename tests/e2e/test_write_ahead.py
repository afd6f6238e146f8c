"""The write-ahead rule on every mutating path: when the intent cannot be recorded, nothing changes.

Each case runs one state change of the broker with the audit log refusing exactly that
change's intent (as a full disk or an oversized event would), then checks that the change
did not happen. A final case checks that with the log working, each change leaves its
intent and a matching done record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.databases import init_options
from tests.e2e.broker_fixture import wv
from tests.e2e.test_custody_failures import FailingSink
from weightvault.auditlog.log import LogReader
from weightvault.auditlog.monitor import Monitor
from weightvault.broker.service import KeyBroker, Principal, Role
from weightvault.errors import AuditLogError
from weightvault.format.keys import FileKey
from weightvault.server.broker_main import BrokerRuntime, load_broker

pytestmark = pytest.mark.e2e

OP = Principal("operator", None, Role.OPERATOR)
ADMIN = Principal("admin", "acme", Role.TENANT_ADMIN)
POLICY = {
    "verifiers": ["insecure-sample"],
    "resources": ["acme/models/*"],
    "rule": {"claim": "tenant", "equals": "acme"},
}


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[BrokerRuntime]:
    wv("broker", "init", tmp_path / "b", "--insecure-sample", *init_options())
    rt = load_broker(tmp_path / "b" / "broker.toml")
    b = rt.broker
    b.create_tenant(OP, "acme")
    b.create_principal(OP, "wl", "acme", Role.WORKLOAD)
    b.put_policy(ADMIN, "acme", "open", POLICY)
    b.add_device(OP, "dev-1", "insecure-sample", ["acme"])
    yield rt
    rt.close()


def _register(b: KeyBroker, name: str = "m") -> None:
    b.register_model(ADMIN, "acme", name, "1", policy="open", file_key=FileKey.generate(), files=[])


# (intent type that fails, the change, a probe of the state it would change)
CASES: dict[str, tuple[str, Callable[[KeyBroker], Any], Callable[[KeyBroker], Any]]] = {
    "tenant": (
        "tenant.change.intent",
        lambda b: b.create_tenant(OP, "globex"),
        lambda b: b.store.tenants.exists("globex"),
    ),
    "principal": (
        "principal.change.intent",
        lambda b: b.create_principal(OP, "wl2", "acme", Role.WORKLOAD),
        lambda b: b.store.principals.by_id("wl2"),
    ),
    "disable": (
        "principal.change.intent",
        lambda b: b.disable_principal(OP, "wl"),
        lambda b: b.store.principals.by_id("wl").disabled,  # type: ignore[union-attr]
    ),
    "model": ("model.register.intent", _register, lambda b: b.store.catalogue.model("acme", "m", "1")),
    "policy": (
        "policy.change.intent",
        lambda b: b.put_policy(ADMIN, "acme", "open", {**POLICY, "description": "v2"}),
        lambda b: b.store.catalogue.latest_policy("acme", "open").version,  # type: ignore[union-attr]
    ),
    "refset": (
        "policy.change.intent",
        lambda b: b.put_refset(ADMIN, "acme", "pcrs", ["aa"]),
        lambda b: b.store.catalogue.refsets("acme"),
    ),
    "device": (
        "device.enrol.intent",
        lambda b: b.add_device(OP, "dev-2", "insecure-sample", ["acme"]),
        lambda b: b.store.devices.by_id("dev-2"),
    ),
    "revoke": (
        "device.revoke.intent",
        lambda b: b.set_device_status(OP, "dev-1", "revoked"),
        lambda b: b.store.devices.by_id("dev-1").status,  # type: ignore[union-attr]
    ),
    "bind": (
        "device.change.intent",
        lambda b: b.set_device_tenants(OP, "dev-1", []),
        lambda b: b.store.devices.by_id("dev-1").tenants,  # type: ignore[union-attr]
    ),
    "kek": ("key.rotate.intent", lambda b: b.rotate_kek(OP, "acme"), lambda b: b.store.keys.latest_kek("acme")),
    "token-key": ("key.rotate.intent", lambda b: b.rotate_token_key(OP), lambda b: b.store.keys.signing_keys("token")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_change_without_its_intent(runtime: BrokerRuntime, case: str) -> None:
    """The change is refused with AuditLogError and the stored state is exactly as before."""
    failing, change, probe = CASES[case]
    b = runtime.broker
    before = probe(b)
    real = b.recorder.sink
    b.recorder.sink = FailingSink(real, {failing})
    try:
        with pytest.raises(AuditLogError):
            change(b)
    finally:
        b.recorder.sink = real
    assert before == probe(b)


def test_an_unrecorded_model_has_no_key_to_release(runtime: BrokerRuntime) -> None:
    """The reported bug: a model whose registration is not on record cannot be found, let alone released."""
    b = runtime.broker
    real = b.recorder.sink
    b.recorder.sink = FailingSink(real, {"model.register.intent"})
    try:
        with pytest.raises(AuditLogError):
            _register(b, "secret")
    finally:
        b.recorder.sink = real
    assert b.store.catalogue.model("acme", "secret", "1") is None
    assert [] == [m.name for m in b.store.catalogue.models("acme") if m.name == "secret"]


def test_every_change_leaves_intent_and_done(runtime: BrokerRuntime) -> None:
    """With the log working, each change closes its intent, and the monitor finds nothing wrong."""
    b = runtime.broker
    for _, change, _ in CASES.values():
        change(b)
    with LogReader.open(runtime.base / "data" / "audit.db", "weightvault-broker/audit") as log:
        events = list(log.events())
    monitor = Monitor(max_open_ms=0)
    for index, event in events:
        monitor.feed(index, event)
    monitor.finish(now_ms=events[-1][1].ts + 1)  # every intent must be closed by now
    assert [] == monitor.violations
    types = [e.type for _, e in events]
    for action in (
        "tenant.change",
        "principal.change",
        "model.register",
        "device.enrol",
        "device.revoke",
        "key.rotate",
    ):
        assert types.count(f"{action}.intent") == types.count(f"{action}.done") > 0, action


def test_a_model_of_1100_files_registers_with_a_small_record(runtime: BrokerRuntime) -> None:
    """Large lists go to the log by digest: ~1,100 files once made a 64 KiB+ event that failed after the
    model was stored; now the record is a few hundred bytes and names the files by digest and count."""
    b = runtime.broker
    files = [{"file_id": f"{i:064x}", "header_mac": "00" * 32, "path": f"model-{i:05d}.wvlt"} for i in range(1100)]
    b.register_model(ADMIN, "acme", "huge", "1", policy="open", file_key=FileKey.generate(), files=files)
    with LogReader.open(runtime.base / "data" / "audit.db", "weightvault-broker/audit") as log:
        (index, event), *_ = [(i, e) for i, e in log.events() if e.type == "model.register.intent"][-1:]
        assert len(log.entry(index)) < 1024
    assert 1100 == event.details["file_count"]
    assert event.details["files_digest"].startswith("sha256:")
