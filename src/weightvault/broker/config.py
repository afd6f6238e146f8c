"""The broker's configuration: one frozen object, its defaults, and the one parser of its settings.

Every setting has its default here (``broker init`` writes them into ``broker.toml``,
and :func:`weightvault.server.broker_main.read_config` reads them back through
:meth:`BrokerConfig.from_mapping`). Parsing is strict: an unknown section or key,
a value of the wrong type, or one out of range is a
:class:`~weightvault.errors.ConfigError` that names the file, the section, the key
and what is allowed, never a traceback. This module reads no file itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from weightvault.errors import ConfigError

__all__ = ["DEFAULTS", "AuditConfig", "BrokerConfig", "KeyPaths", "WitnessConfig"]

#: The longest a challenge may stay valid, and a result token.
MAX_CHALLENGE_TTL_SECONDS: Final = 60
MAX_TOKEN_TTL_SECONDS: Final = 300


@dataclass(frozen=True, slots=True)
class KeyPaths:
    """Where the broker's keys live (relative paths are relative to ``broker.toml``)."""

    root: str = "keys/root.key"  # or "custody": the root key is split among custodians
    token_signing: str = "keys/token-signing.key"  # noqa: S105 - a path, not a secret
    registration: str = "keys/registration.key"
    audit_log: str = "keys/audit-log.key"
    audit_hash: str = "keys/audit-hash.key"


@dataclass(frozen=True, slots=True)
class WitnessConfig:
    name: str
    url: str
    vkey: str


@dataclass(frozen=True, slots=True)
class AuditConfig:
    witnesses: tuple[WitnessConfig, ...] = ()
    quorum: int = 0
    #: How long events nobody waits for (a release's decision and done) wait to share a
    #: commit; an append that someone waits for (an intent) commits at once.
    batch_delay_s: float = 0.002
    #: "file": the log is the SQLite file ``[storage] audit_db`` (one broker process).
    #: "database": the log lives in the PostgreSQL database of ``[storage] url``, shared by
    #: replicas, one of which sequences it under a lease (docs/operations.md).
    storage: str = "file"
    #: How long the sequencer's lease lasts unrenewed: the longest a dead sequencer stalls the log.
    lease_ttl_s: float = 5.0


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Everything ``broker.toml`` says, validated. ``base`` is the directory paths are relative to."""

    base: Path = Path()
    broker_id: str = "weightvault-broker"
    host: str = "127.0.0.1"
    port: int = 8443
    challenge_ttl_seconds: int = 60
    token_ttl_seconds: int = 300
    #: How long a web console sign-in lasts (docs/console.md); signing out ends it sooner.
    console_session_seconds: int = 8 * 3600
    max_body_bytes: int = 256 << 10
    rate_per_second: float = 200.0
    burst: int = 400
    #: The most containment holds a sentinel principal may place in an hour (docs/sentinel.md).
    containment_max_holds_per_hour: int = 20
    storage_url: str = "sqlite:///data/broker.db"
    audit_db: str = "data/audit.db"
    keys: KeyPaths = field(default_factory=KeyPaths)
    allow: tuple[str, ...] = ()
    insecure_sample_enabled: bool = False
    tpm: Mapping[str, Any] | None = None
    #: ``[verifiers.sev_snp]``: pinned AMD chains, reference measurements, TCB minimum (docs/attestation-cc.md).
    sev_snp: Mapping[str, Any] | None = None
    #: ``[verifiers.tdx]``: collateral, reference MRTD and RTMRs, allowed TCB statuses (docs/attestation-cc.md).
    tdx: Mapping[str, Any] | None = None
    #: ``[verifiers.nvidia_gpu]``: pinned NVIDIA roots, driver and VBIOS RIMs (docs/attestation-cc.md).
    nvidia_gpu: Mapping[str, Any] | None = None
    attestation_token: tuple[Mapping[str, Any], ...] = ()
    audit: AuditConfig = field(default_factory=AuditConfig)
    kek_max_age_days: float = 0.0
    token_key_max_age_days: float = 0.0
    rotation_check_seconds: float = 60.0
    tls_cert: str | None = None
    tls_key: str | None = None
    #: ``[models] signers``: name -> EC public key (PEM file) of those whose OpenSSF model
    #: signatures the broker checks at registration; the name is the claim ``model.signer``.
    model_signers: Mapping[str, str] = field(default_factory=dict)
    #: ``[models] require_signature``: refuse to register a model no signer signed.
    require_signature: bool = False
    #: ``[principals] token_max_age_days``: role -> the longest an API token of that role lives
    #: (days), from its creation or rotation; roles not named have tokens that do not expire.
    token_max_age_days: Mapping[str, float] = field(default_factory=dict)

    def path(self, value: str) -> Path:
        """A configured path, resolved against the configuration's directory."""
        p = Path(value)
        return p if p.is_absolute() else self.base / p

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL, with a relative SQLite path resolved against the configuration's directory."""
        prefix = "sqlite:///"
        if self.storage_url.startswith(prefix) and not self.storage_url.startswith(prefix + "/"):
            return prefix + str(self.base / self.storage_url[len(prefix) :])
        return self.storage_url

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any], config_path: Path) -> BrokerConfig:
        """Validate a parsed ``broker.toml``; ``config_path`` names it in errors and anchors relative paths.

        Raises:
            ConfigError: any section, key or value that is not allowed.
        """
        r = _Reader(config_path)
        r.known(doc, "", {"broker", "storage", "keys", "verifiers", "audit", "rotation", "tls", "models", "principals"})
        broker = r.section(doc, "broker", required=True)
        r.known(
            broker,
            "broker",
            {
                "id",
                "host",
                "port",
                "challenge_ttl_seconds",
                "token_ttl_seconds",
                "console_session_seconds",
                "max_body_bytes",
                "rate_per_second",
                "burst",
                "containment_max_holds_per_hour",
            },
        )
        storage = r.section(doc, "storage", required=True)
        r.known(storage, "storage", {"url", "audit_db"})
        keys = r.section(doc, "keys", required=True)
        r.known(keys, "keys", {"root", "token_signing", "registration", "audit_log", "audit_hash"})
        verifiers = r.section(doc, "verifiers")
        r.known(
            verifiers,
            "verifiers",
            {"allow", "insecure_sample_enabled", "tpm", "sev_snp", "tdx", "nvidia_gpu", "attestation_token"},
        )
        audit = r.section(doc, "audit")
        r.known(audit, "audit", {"witnesses", "quorum", "batch_delay_s", "storage", "lease_ttl_s"})
        rotation = r.section(doc, "rotation")
        r.known(rotation, "rotation", {"kek_max_age_days", "token_key_max_age_days", "check_seconds"})
        models = r.section(doc, "models")
        r.known(models, "models", {"signers", "require_signature"})
        signers = r.section(models, "signers")
        for signer, key_path in signers.items():
            if not _SIGNER_NAME.fullmatch(signer) or not isinstance(key_path, str) or not key_path:
                wanted = "names a PEM public key file; names are [a-z0-9._-]"
                raise r._bad("models", f"signers.{signer}", key_path, wanted)
        require_signature = r.boolean(models, "models", "require_signature", False)
        if require_signature and not signers:
            raise ConfigError(f"{config_path}: [models] require_signature needs at least one of [models] signers")
        principals = r.section(doc, "principals")
        r.known(principals, "principals", {"token_max_age_days"})
        max_ages = r.section(principals, "token_max_age_days")
        if "operator" in max_ages:
            raise ConfigError(
                f"{config_path}: [principals] token_max_age_days cannot name operator: nothing could renew "
                "the last operator's expired token (operators rotate their own: admin principal ID --rotate)"
            )
        r.known(max_ages, "principals.token_max_age_days", set(_EXPIRING_ROLES))
        token_max_age_days = {
            role: r.number(max_ages, "principals.token_max_age_days", role, 0.0, (0.001, 36_500.0)) for role in max_ages
        }
        tls = r.section(doc, "tls")
        r.known(tls, "tls", {"cert", "key"})
        d = DEFAULTS
        witnesses = tuple(
            WitnessConfig(
                r.string(w, "audit.witnesses[]", "name", None),
                r.string(w, "audit.witnesses[]", "url", None),
                r.string(w, "audit.witnesses[]", "vkey", None),
            )
            for w in r.tables(audit, "audit", "witnesses")
        )
        quorum = r.integer(audit, "audit", "quorum", d.audit.quorum, (0, len(witnesses)))
        storage_url = _storage_url(r.string(storage, "storage", "url", d.storage_url), config_path)
        log_storage = r.string(audit, "audit", "storage", d.audit.storage)
        if log_storage not in ("file", "database"):
            raise ConfigError(f'{config_path}: [audit] storage is "file" or "database"')
        if log_storage == "database" and not storage_url.startswith("postgresql"):
            raise ConfigError(f'{config_path}: [audit] storage = "database" needs a postgresql:// [storage] url')
        cert, key = r.optional_string(tls, "tls", "cert"), r.optional_string(tls, "tls", "key")
        if (cert is None) != (key is None):
            raise ConfigError(f"{config_path}: [tls] needs both cert and key")
        tpm, sev_snp, tdx = verifiers.get("tpm"), verifiers.get("sev_snp"), verifiers.get("tdx")
        nvidia_gpu = verifiers.get("nvidia_gpu")
        for name, table in (("tpm", tpm), ("sev_snp", sev_snp), ("tdx", tdx), ("nvidia_gpu", nvidia_gpu)):
            if table is not None and not isinstance(table, dict):
                raise ConfigError(f"{config_path}: [verifiers.{name}] must be a table")
        return cls(
            base=config_path.parent,
            broker_id=r.string(broker, "broker", "id", d.broker_id),
            host=r.string(broker, "broker", "host", d.host),
            port=r.integer(broker, "broker", "port", d.port, (1, 65535)),
            challenge_ttl_seconds=r.integer(
                broker, "broker", "challenge_ttl_seconds", d.challenge_ttl_seconds, (1, MAX_CHALLENGE_TTL_SECONDS)
            ),
            token_ttl_seconds=r.integer(
                broker, "broker", "token_ttl_seconds", d.token_ttl_seconds, (1, MAX_TOKEN_TTL_SECONDS)
            ),
            console_session_seconds=r.integer(
                broker, "broker", "console_session_seconds", d.console_session_seconds, (60, 7 * 86400)
            ),
            max_body_bytes=r.integer(broker, "broker", "max_body_bytes", d.max_body_bytes, (1024, 16 << 20)),
            rate_per_second=r.number(broker, "broker", "rate_per_second", d.rate_per_second, (0.001, 1e6)),
            burst=r.integer(broker, "broker", "burst", d.burst, (1, 1_000_000)),
            containment_max_holds_per_hour=r.integer(
                broker, "broker", "containment_max_holds_per_hour", d.containment_max_holds_per_hour, (0, 10_000)
            ),
            storage_url=storage_url,
            audit_db=r.string(storage, "storage", "audit_db", d.audit_db),
            keys=KeyPaths(
                root=r.string(keys, "keys", "root", d.keys.root),
                token_signing=r.string(keys, "keys", "token_signing", d.keys.token_signing),
                registration=r.string(keys, "keys", "registration", d.keys.registration),
                audit_log=r.string(keys, "keys", "audit_log", d.keys.audit_log),
                audit_hash=r.string(keys, "keys", "audit_hash", d.keys.audit_hash),
            ),
            allow=tuple(r.strings(verifiers, "verifiers", "allow")),
            insecure_sample_enabled=r.boolean(
                verifiers, "verifiers", "insecure_sample_enabled", d.insecure_sample_enabled
            ),
            tpm=tpm,
            sev_snp=sev_snp,
            tdx=tdx,
            nvidia_gpu=nvidia_gpu,
            attestation_token=tuple(r.tables(verifiers, "verifiers", "attestation_token")),
            audit=AuditConfig(
                witnesses,
                quorum,
                r.number(audit, "audit", "batch_delay_s", d.audit.batch_delay_s, (0.0, 1.0)),
                log_storage,
                r.number(audit, "audit", "lease_ttl_s", d.audit.lease_ttl_s, (0.5, 300.0)),
            ),
            kek_max_age_days=r.number(rotation, "rotation", "kek_max_age_days", d.kek_max_age_days, (0.0, 36_500.0)),
            token_key_max_age_days=r.number(
                rotation, "rotation", "token_key_max_age_days", d.token_key_max_age_days, (0.0, 36_500.0)
            ),
            rotation_check_seconds=r.number(
                rotation, "rotation", "check_seconds", d.rotation_check_seconds, (0.01, 86_400.0)
            ),
            tls_cert=cert,
            tls_key=key,
            model_signers=dict(signers),
            require_signature=require_signature,
            token_max_age_days=token_max_age_days,
        )


DEFAULTS: Final = BrokerConfig()
#: The roles whose API tokens may expire: all but operator (see ``token_max_age_days``).
_EXPIRING_ROLES: Final = ("tenant-admin", "publisher", "auditor", "workload", "approver", "sentinel")
_SIGNER_NAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")

#: The storage URL schemes a broker opens (weightvault.broker.storage.database checks the rest).
_STORAGE_SCHEMES: Final = ("sqlite:///", "postgresql://", "postgresql+psycopg://")


def check_storage_url(url: str) -> str:
    """``url`` if it names a supported engine: SQLite or PostgreSQL (psycopg 3).

    Raises:
        ConfigError: any other scheme, or a URL with control characters.
    """
    if not url.startswith(_STORAGE_SCHEMES) or any(ord(c) < 0x20 for c in url):
        raise ConfigError("the storage URL must start with sqlite:/// or postgresql:// (postgresql+psycopg://)")
    return url


def _storage_url(url: str, config_path: Path) -> str:
    try:
        return check_storage_url(url)
    except ConfigError as exc:
        raise ConfigError(f"{config_path}: [storage] url: {exc}") from None


class _Reader:
    """Typed getters that turn every bad value into one clear ConfigError."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _bad(self, section: str, key: str, value: object, wanted: str) -> ConfigError:
        where = f"[{section}] " if section else ""
        return ConfigError(f"{self.path}: {where}{key} = {value!r}: {wanted}")

    def known(self, table: Mapping[str, Any], section: str, keys: set[str]) -> None:
        unknown = sorted(set(table) - keys)
        if unknown:
            where = f"[{section}]" if section else "the top level"
            raise ConfigError(f"{self.path}: unknown key(s) in {where}: {', '.join(unknown)} (known: {sorted(keys)})")

    def section(self, doc: Mapping[str, Any], name: str, *, required: bool = False) -> Mapping[str, Any]:
        value = doc.get(name)
        if value is None:
            if required:
                raise ConfigError(f"{self.path}: missing section [{name}]")
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.path}: [{name}] must be a table")
        return value

    def integer(self, table: Mapping[str, Any], section: str, key: str, default: int, bounds: tuple[int, int]) -> int:
        lo, hi = bounds
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self._bad(section, key, value, f"must be an integer from {lo} to {hi}")
        return value

    def number(
        self, table: Mapping[str, Any], section: str, key: str, default: float, bounds: tuple[float, float]
    ) -> float:
        lo, hi = bounds
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            raise self._bad(section, key, value, f"must be a number from {lo:g} to {hi:g}")
        return float(value)

    def boolean(self, table: Mapping[str, Any], section: str, key: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise self._bad(section, key, value, "must be true or false")
        return value

    def string(self, table: Mapping[str, Any], section: str, key: str, default: str | None) -> str:
        value = table.get(key, default)
        if not isinstance(value, str) or not value:
            raise self._bad(section, key, value, "must be a non-empty string")
        return value

    def optional_string(self, table: Mapping[str, Any], section: str, key: str) -> str | None:
        return None if key not in table else self.string(table, section, key, None)

    def strings(self, table: Mapping[str, Any], section: str, key: str) -> list[str]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._bad(section, key, value, "must be a list of strings")
        return value

    def tables(self, table: Mapping[str, Any], section: str, key: str) -> list[Mapping[str, Any]]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self._bad(section, key, value, "must be a list of tables")
        return value
