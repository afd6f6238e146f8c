"""A real broker process on loopback, initialised with two tenants, principals, policies and models."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from tests.databases import init_options
from tests.e2e.servers import serve_broker, set_rate_limit
from weightvault.auditlog.events import AuditEvent
from weightvault.auditlog.log import LogReader
from weightvault.client.broker import BrokerClient, BrokerRecipient
from weightvault.format.keys import FileKey
from weightvault.sealing import seal_safetensors


def wv(*args: str | Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "weightvault", *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"weightvault {args}: exit {proc.returncode}: {proc.stderr}")
    return proc.stdout


@dataclass
class Broker:
    url: str
    base: Path
    tokens: dict[str, str]
    issuer_key: Any
    models: dict[str, Path] = field(default_factory=dict)
    file_keys: dict[str, FileKey] = field(default_factory=dict)
    clients: dict[str, BrokerClient] = field(default_factory=dict)
    audit_db: Path | None = None

    @property
    def audit_path(self) -> Path:
        return self.audit_db or self.base / "data" / "audit.db"

    def client(self, who: str) -> BrokerClient:
        """One client per principal, reused, closed when the broker stops."""
        if who not in self.clients:
            self.clients[who] = BrokerClient(self.url, self.tokens[who])
        return self.clients[who]

    def close_clients(self) -> None:
        for client in self.clients.values():
            client.close()
        self.clients.clear()

    def events(self, start: int = 0, *, until: str | None = None) -> list[tuple[int, AuditEvent]]:
        """Committed events from ``start``; with ``until``, first wait (up to 10 s) for an event of
        that type: events nobody waits for (a release's done) commit a few milliseconds after
        the response."""
        deadline = time.monotonic() + 10
        while True:
            with LogReader.open(self.audit_path, "weightvault-broker/audit") as log:
                events = list(log.events(start=start))
            if until is None or any(e.type == until for _, e in events) or time.monotonic() > deadline:
                return events
            time.sleep(0.01)

    def audit_size(self) -> int:
        """The log's size once it has stopped growing for 100 ms: a previous request's queued
        events (a release's done) then belong to what came before, not to the next test's range."""
        last, still_since = -1, time.monotonic()
        deadline = still_since + 10
        while True:
            with LogReader.open(self.audit_path, "weightvault-broker/audit") as log:
                size = log.size
            now = time.monotonic()
            if size != last:
                last, still_since = size, now
            elif now - still_since >= 0.1 or now > deadline:
                return size
            time.sleep(0.02)

    def passport(self, report_data: bytes, *, now: int, **claims: Any) -> str:
        import base64

        body = {
            "iss": "https://attestation.test",
            "iat": now,
            "exp": now + 300,
            "eat_nonce": base64.urlsafe_b64encode(report_data).decode().rstrip("="),
            "dbgstat": "disabled",
            **claims,
        }
        return jwt.encode(body, self.issuer_key, algorithm="ES256", headers={"kid": "as-1"})


POLICY_OPEN = {
    "verifiers": ["insecure-sample", "attestation-token"],
    "resources": ["{t}/models/*"],
    "rule": {"claim": "tenant", "equals": "{t}"},
}


def _policy(tenant: str, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(POLICY_OPEN).replace("{t}", tenant))
    doc.update(changes)
    return doc


@contextmanager
def running_broker(
    tmp: Path,
    plain_model: Path,
    *,
    tls: tuple[Path, Path] | None = None,
    rate: tuple[float, int] = (200.0, 400),
    extra_config: str = "",
    allow: list[str] | None = None,
    database_url: str | None = None,
    replicated: bool = False,
    challenge_ttl_seconds: int = 3,
    audit_db: Path | None = None,
) -> Iterator[Broker]:
    """A broker process with tenants acme and globex, their principals, an open policy and a model.

    ``database_url``: a database of the test's own (default: this run's backend, a fresh one).
    ``replicated``: the audit log lives in that (PostgreSQL) database; this process is replica "r1".
    """
    base = tmp / "broker"
    storage = init_options() if database_url is None else ["--database-url", database_url]
    wv("broker", "init", base, "--insecure-sample", *storage, *(["--replicated"] if replicated else []))
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = "as-1"
    (base / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    config = (base / "broker.toml").read_text()
    allowed = json.dumps(allow or ["insecure-sample", "attestation-token"])
    config = config.replace('allow = ["insecure-sample"]', f"allow = {allowed}")
    config = re.sub(r"challenge_ttl_seconds = \d+", f"challenge_ttl_seconds = {challenge_ttl_seconds}", config)
    if audit_db is not None:
        config = re.sub(r'(?m)^audit_db = "[^"]*"', f'audit_db = "{audit_db}"', config)
    config = config.replace(
        "[audit]",
        '[[verifiers.attestation_token]]\nname = "test-as"\nissuer = "https://attestation.test"\n'
        'jwks_file = "jwks.json"\n'
        'algorithms = ["ES256"]\nmax_age_seconds = 120\nnonce_claim = "eat_nonce"\ndevice_claim = "ueid"\n'
        + extra_config
        + "\n[audit]",
    )
    scheme = "http"
    if tls is not None:
        (base / "broker.toml").write_text(config + f'\n[tls]\ncert = "{tls[0]}"\nkey = "{tls[1]}"\n')
        scheme = "https"
    else:
        (base / "broker.toml").write_text(config)
    set_rate_limit(base, *rate)
    with ExitStack() as stack:
        url = stack.enter_context(
            serve_broker(base, scheme=scheme, verify=str(tls[0]) if tls else True, replica="r1" if replicated else None)
        )
        tokens = {"operator": (base / "operator.token").read_text().strip()}
        broker = Broker(url, base, tokens, key, audit_db=audit_db)
        stack.callback(broker.close_clients)
        if tls is not None:
            yield broker
            return
        op = broker.client("operator")
        for tenant in ("acme", "globex"):
            op.create_tenant(tenant)
            for role, suffix in (
                ("tenant-admin", "admin"),
                ("publisher", "pub"),
                ("workload", "wl"),
                ("auditor", "aud"),
            ):
                tokens[f"{tenant}-{suffix}"] = op.create_principal(f"{tenant}-{suffix}", role, tenant)
            tokens[f"{tenant}-wl2"] = op.create_principal(f"{tenant}-wl2", "workload", tenant)
            admin = broker.client(f"{tenant}-admin")
            admin.put_policy(tenant, "open", _policy(tenant))
            pub = broker.client(f"{tenant}-pub")
            resource = f"{tenant}/models/small@1"
            out = tmp / f"{tenant}-small.wvlt"
            fk = FileKey.generate()
            result = seal_safetensors(plain_model, out, file_key=fk, recipients=[BrokerRecipient(url, resource)])
            pub.register_model(
                tenant,
                "small",
                "1",
                policy="open",
                file_key=fk,
                files=[{"file_id": result.file_id.hex(), "header_mac": result.header_mac.hex(), "path": out.name}],
            )
            broker.models[tenant] = out
            broker.file_keys[tenant] = fk
        yield broker
