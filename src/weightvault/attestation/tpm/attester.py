"""The workload side: a TPM reached through a TCTI (swtpm, or /dev/tpmrm0 on real hardware).

The AK is a primary key of the endorsement hierarchy created from a fixed template
(ECC P-256, ECDSA-SHA256, restricted, fixedTPM, fixedParent, sensitiveDataOrigin),
so the same TPM always re-derives the same AK and no key blob has to be kept on disk.
The EK is created from the TCG template that matches the EK certificate in NV.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from weightvault.attestation.tpm.eventlog import (
    ALG_SHA256,
    EV_IPL,
    MAX_LOG_BYTES,
    Event,
    encode_event_log,
    parse_event_log,
    replay_sha256,
)
from weightvault.attestation.tpm.quote import QuoteEvidence
from weightvault.errors import ConfigError, QuoteError
from weightvault.files import atomic_file

__all__ = ["TPMAttester", "record_measurement"]

_RSA_EK_CERT: Final = 0x01C00002
_ECC_EK_CERT: Final = 0x01C0000A


class TPMAttester:
    """A connection to one TPM; use as a context manager or call :meth:`close`."""

    def __init__(self, esapi: Any, event_logs: Sequence[Path] = ()) -> None:
        self._e = esapi
        self.event_logs = [Path(p) for p in event_logs]
        self._ek: Any = None
        self._ek_public: Any = None
        self._ek_cert: bytes | None = None
        self._ak: Any = None
        self._ak_public: Any = None

    @classmethod
    def open(cls, tcti: str, event_logs: Sequence[Path] = ()) -> TPMAttester:
        """Connect through a TCTI string such as ``swtpm:host=127.0.0.1,port=2321`` or ``device:/dev/tpmrm0``.

        ``event_logs`` are TCG event logs sent with every quote (read afresh each time),
        such as ``/sys/kernel/security/tpm0/binary_bios_measurements`` and the log that
        :func:`record_measurement` keeps.
        """
        try:
            import tpm2_pytss
        except ImportError as exc:
            raise ConfigError("TPM support needs tpm2-pytss: pip install 'weightvault[tpm]'") from exc
        try:
            attester = cls(tpm2_pytss.ESAPI(tcti), event_logs)
        except Exception as exc:
            raise ConfigError(f"cannot reach the TPM at {tcti!r}: {exc}") from exc
        attester._flush_stale()
        return attester

    def _flush_stale(self) -> None:
        """Flush transient objects left by crashed clients of a TPM without a resource manager.

        Without a resource manager (a bare swtpm) every connection's transient objects
        stay loaded until the TPM runs out of object slots. Through a resource manager
        (/dev/tpmrm0, tpm2-abrmd) this sees only this connection's objects.
        """
        import tpm2_pytss

        _, data = self._e.get_capability(tpm2_pytss.TPM2_CAP.HANDLES, tpm2_pytss.TPM2_HT.TRANSIENT << 24, 64)
        for handle in data.data.handles:
            try:
                self._e.flush_context(self._e.tr_from_tpmpublic(handle))
            except Exception:  # noqa: S112 - a handle that vanished meanwhile is fine
                continue

    def close(self) -> None:
        for handle in (self._ak, self._ek):
            if handle is not None:
                with contextlib.suppress(Exception):  # best effort when closing
                    self._e.flush_context(handle)
        self._e.close()

    def __enter__(self) -> TPMAttester:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_ek(self) -> None:
        if self._ek is not None:
            return
        import tpm2_pytss
        from tpm2_pytss.utils import NVReadEK, create_ek_template

        reader = NVReadEK(self._e)
        for kind in ("EK-RSA2048", "EK-ECC256"):
            try:
                cert, template = create_ek_template(kind, reader)
            except ValueError:
                continue
            if cert:
                self._ek_cert = bytes(cert)
                self._ek, self._ek_public, _, _, _ = self._e.create_primary(
                    tpm2_pytss.TPM2B_SENSITIVE_CREATE(), template, tpm2_pytss.ESYS_TR.ENDORSEMENT
                )
                return
        raise QuoteError("the TPM has no EK certificate in NV")

    def _ensure_ak(self) -> None:
        if self._ak is not None:
            return
        import tpm2_pytss

        a = tpm2_pytss.TPMA_OBJECT
        attrs = a.FIXEDTPM | a.FIXEDPARENT | a.SENSITIVEDATAORIGIN | a.USERWITHAUTH | a.RESTRICTED | a.SIGN_ENCRYPT
        template = tpm2_pytss.TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=attrs, nameAlg="sha256")
        # A distinct unique field keeps this AK apart from any other primary key of the hierarchy.
        template.publicArea.unique.ecc.x = b"weightvault AK v1".ljust(32, b"\x00")
        self._ak, self._ak_public, _, _, _ = self._e.create_primary(
            tpm2_pytss.TPM2B_SENSITIVE_CREATE(), template, tpm2_pytss.ESYS_TR.ENDORSEMENT
        )

    def ek_certificate(self) -> bytes:
        self._ensure_ek()
        assert self._ek_cert is not None
        return self._ek_cert

    def ek_public(self) -> bytes:
        self._ensure_ek()
        return bytes(self._ek_public.marshal())

    def ak_public(self) -> bytes:
        self._ensure_ak()
        return bytes(self._ak_public.marshal())

    def activate(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential with the EK (policy session for its PolicySecret(endorsement))."""
        import tpm2_pytss

        self._ensure_ek()
        self._ensure_ak()
        blob, _ = tpm2_pytss.TPM2B_ID_OBJECT.unmarshal(credential_blob)
        secret, _ = tpm2_pytss.TPM2B_ENCRYPTED_SECRET.unmarshal(encrypted_secret)
        session = self._e.start_auth_session(
            tpm2_pytss.ESYS_TR.NONE,
            tpm2_pytss.ESYS_TR.NONE,
            tpm2_pytss.TPM2_SE.POLICY,
            tpm2_pytss.TPMT_SYM_DEF(algorithm=tpm2_pytss.TPM2_ALG.NULL),
            tpm2_pytss.TPM2_ALG.SHA256,
        )
        try:
            self._e.policy_secret(tpm2_pytss.ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
            out = self._e.activate_credential(
                self._ak, self._ek, blob, secret, session1=tpm2_pytss.ESYS_TR.PASSWORD, session2=session
            )
        except Exception as exc:
            raise QuoteError(f"ActivateCredential failed: {exc}") from exc
        finally:
            self._e.flush_context(session)
        return bytes(out)

    def read_pcrs(self, indices: Sequence[int]) -> dict[int, bytes]:
        """SHA-256 PCR values; TPM2_PCR_Read returns at most 8 per call, so read in groups."""
        import tpm2_pytss

        out: dict[int, bytes] = {}
        wanted = sorted(set(indices))
        for start in range(0, len(wanted), 8):
            group = wanted[start : start + 8]
            selection = tpm2_pytss.TPML_PCR_SELECTION.parse("sha256:" + ",".join(map(str, group)))
            _, _, values = self._e.pcr_read(selection)
            for index, value in zip(group, values, strict=True):
                out[index] = bytes(value)
        return out

    def extend(self, pcr: int, digest: bytes) -> None:
        """Extend a SHA-256 PCR with a digest (for example a workload measurement)."""
        import tpm2_pytss

        if len(digest) != 32 or not 0 <= pcr <= 23:
            raise ValueError("extend takes a PCR 0..23 and a 32-byte digest")
        values = tpm2_pytss.TPML_DIGEST_VALUES(
            [tpm2_pytss.TPMT_HA(hashAlg=tpm2_pytss.TPM2_ALG.SHA256, digest=tpm2_pytss.TPMU_HA(sha256=digest))]
        )
        self._e.pcr_extend(tpm2_pytss.ESYS_TR.PCR0 + pcr, values)

    def quote(self, report_data: bytes, selection: str) -> QuoteEvidence:
        """TPM2_Quote over ``selection`` (``sha256:0,1,...``) with ``report_data`` as qualifying data."""
        import tpm2_pytss

        self._ensure_ak()
        sel = tpm2_pytss.TPML_PCR_SELECTION.parse(selection)
        quoted, signature = self._e.quote(
            self._ak,
            sel,
            tpm2_pytss.TPM2B_DATA(report_data),
            tpm2_pytss.TPMT_SIG_SCHEME(scheme=tpm2_pytss.TPM2_ALG.NULL),
        )
        indices = sorted(
            {int(i) for bank in selection.split("+") if bank.startswith("sha256:") for i in bank[7:].split(",")}
        )
        return QuoteEvidence(bytes(quoted.attestationData), bytes(signature.marshal()), self.read_pcrs(indices))

    def evidence(self, report_data: bytes, challenge: Mapping[str, Any]) -> dict[str, Any]:
        """The broker's ``tpm`` evidence for a challenge (the Attester protocol)."""
        selection = str(challenge.get("tpm", {}).get("pcr_selection", "sha256:0,1,2,3,4,5,6,7,23"))
        logs = [_read_log(path) for path in self.event_logs]
        quote = self.quote(report_data, selection)
        evidence: dict[str, Any] = {
            "type": "tpm",
            "quote": base64.b64encode(quote.quote).decode(),
            "signature": base64.b64encode(quote.signature).decode(),
            "pcrs": {"sha256": {str(i): v.hex() for i, v in quote.pcrs.items()}},
        }
        if logs:
            evidence["event_logs"] = [base64.b64encode(log).decode() for log in logs]
        return evidence


def _read_log(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            blob = handle.read(MAX_LOG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the event log {path}: {exc.strerror}") from exc
    if len(blob) > MAX_LOG_BYTES:
        raise ConfigError(f"event log {path} is larger than {MAX_LOG_BYTES} bytes")
    return blob


def record_measurement(tpm: TPMAttester, log: Path, pcr: int, digest: bytes, description: str) -> bytes:
    """Extend ``pcr`` with ``digest`` and append the event to the TCG event log at ``log``.

    The log (created if missing) is rewritten atomically after the extend succeeded,
    so it never lists a measurement the TPM did not take. Returns the new PCR value.

    Raises:
        QuoteError: the existing log is malformed, or it no longer replays to the
            PCR's current value (the log and the TPM disagree; nothing is extended).
        ConfigError: the log cannot be read or written.
    """
    events: list[Event] = []
    if log.exists():
        parsed = parse_event_log(_read_log(log))
        if set(parsed.algorithms) != {ALG_SHA256}:
            raise ConfigError(f"{log} is not a SHA-256 measurement log written by weightvault")
        events = list(parsed.events)
        replayed = replay_sha256(parsed).get(pcr, bytes(32))
        current = tpm.read_pcrs([pcr])[pcr]
        if replayed != current:
            raise QuoteError(
                f"event_log_mismatch: {log} replays PCR {pcr} to {replayed.hex()[:16]}…, "
                f"the TPM has {current.hex()[:16]}…"
            )
    event = Event(pcr, EV_IPL, {ALG_SHA256: digest}, description.encode() + b"\x00")
    tpm.extend(pcr, digest)
    try:
        with atomic_file(log, overwrite=True) as handle:
            handle.write(encode_event_log([*events, event]))
    except OSError as exc:
        raise ConfigError(f"PCR {pcr} was extended but {log} could not be written ({exc.strerror})") from exc
    return tpm.read_pcrs([pcr])[pcr]
