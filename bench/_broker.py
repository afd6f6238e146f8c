"""Setup the broker benchmarks share: a tenant with its clients, models behind one-verifier
policies, and TPM devices measured into PCR 23. Not a benchmark itself."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

from weightvault import FileKey
from weightvault.client.broker import BrokerClient

TENANT = "bench"
#: What the benchmarks' TPM devices measure into PCR 23 before attesting.
IMAGE = hashlib.sha256(b"bench serving image").digest()
SAMPLE_RULE = {"claim": "tenant", "equals": TENANT}
TPM_RULE = {
    "allOf": [
        {"claim": "device.kind", "equals": "tpm"},
        {"claim": "tpm.pcr.sha256.23", "equals": hashlib.sha256(bytes(32) + IMAGE).hexdigest()},
    ]
}


def init_broker(base: Path, *options: str) -> None:
    """``weightvault broker init BASE OPTIONS...`` (quietly; fails loudly)."""
    subprocess.run(
        [sys.executable, "-m", "weightvault", "broker", "init", str(base), *options], check=True, capture_output=True
    )


def tenant_clients(url: str, base: Path) -> tuple[BrokerClient, BrokerClient, BrokerClient]:
    """Create the bench tenant; return the operator's, a tenant admin's and a publisher's clients."""
    op = BrokerClient(url, (base / "operator.token").read_text().strip())
    op.create_tenant(TENANT)
    admin = BrokerClient(url, op.create_principal("adm", "tenant-admin", TENANT))
    pub = BrokerClient(url, op.create_principal("pub", "publisher", TENANT))
    return op, admin, pub


def publish(admin: BrokerClient, pub: BrokerClient, name: str, verifier: str, rule: dict[str, Any]) -> str:
    """Model ``name``@1 (a fresh file key, no files) behind a policy that accepts only ``verifier``."""
    resources = [f"{TENANT}/models/{name}@*"]
    admin.put_policy(TENANT, name, {"verifiers": [verifier], "resources": resources, "rule": rule})
    fk = FileKey.generate()
    pub.register_model(TENANT, name, "1", policy=name, file_key=fk, files=[])
    fk.wipe()
    return f"{TENANT}/models/{name}@1"


def enrol_measured_tpm(op: BrokerClient, attester: Any, device_id: str) -> None:
    """Enrol a TPM device in the bench tenant and measure :data:`IMAGE` into its PCR 23."""
    op.enrol_tpm_device(attester, device_id, [TENANT])
    attester.extend(23, IMAGE)
