"""A test log and its witnesses: the fixed log key, clock and witness keys the audit-log and report tests share."""

from __future__ import annotations

from pathlib import Path

from weightvault.auditlog import TYPE_COSIGNATURE, AuditLog, InProcessWitness, NoteSigner, Witness, WitnessPolicy
from weightvault.auditlog.log import LogConfig
from weightvault.crypto.signing import Ed25519Signer

NOW = 1_800_000_000.0
LOG_KEY = NoteSigner("weightvault.test/audit", Ed25519Signer(b"\x11" * 32))


def clock() -> float:
    return NOW


def witness(tmp: Path, n: int) -> Witness:
    """Witness ``n`` (key fixed by ``n``), which knows :data:`LOG_KEY`, its state in ``tmp``."""
    signer = NoteSigner(f"witness{n}.test", Ed25519Signer(bytes([0x20 + n]) * 32), TYPE_COSIGNATURE)
    return Witness(signer, tmp / f"witness{n}.db", {LOG_KEY.name: [LOG_KEY.verifier]}, clock=clock)


def witnessed_log(tmp_path: Path, witnesses: list[Witness], k: int) -> AuditLog:
    """A log in ``tmp_path`` that publishes each checkpoint once ``k`` of ``witnesses`` cosigned it."""
    policy = WitnessPolicy.threshold([w.signer.verifier for w in witnesses], k)
    return AuditLog(
        tmp_path / "audit.db",
        LOG_KEY,
        witnesses=[InProcessWitness(w) for w in witnesses],
        policy=policy,
        clock=clock,
        config=LogConfig(batch_delay_s=0),
    )
