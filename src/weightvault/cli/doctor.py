"""``weightvault doctor``: check this machine and a broker's configuration, and say what to fix.

Each check reports ``ok``, ``warn`` (works, but something is missing or risky) or ``FAIL``
(what the check needs does not work), with the fix. Optional components are reported,
never required. The command exits 0 unless a check failed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Final

import click

from weightvault.client.workload import BROKER_ENV, TOKEN_ENV, read_token
from weightvault.encoding import parse_json_object
from weightvault.errors import ConfigError, WeightVaultError

__all__ = ["doctor"]

#: Challenges live a minute and result tokens five: a clock further off than this breaks releases.
_MAX_SKEW_S: Final = 30.0
#: An API token that expires sooner than this is worth a warning: its rotation needs someone else.
_TOKEN_WARN_S: Final = 7 * 86400
_OPTIONAL: Final = (
    ("torch", "torch", "loading into PyTorch"),
    ("transformers", "transformers", "loading into transformers"),
    ("triton", "gpu", "decrypting on a GPU"),
    ("tpm2_pytss", "tpm", "TPM attestation"),
    ("psycopg", "postgresql", "brokers on PostgreSQL"),
    ("obstore", "s3", "sealed weights in S3"),
    ("model_signing", "signing", "OpenSSF model signing"),
)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # ok, warn, FAIL
    detail: str
    fix: str = ""


def _components() -> list[Check]:
    out = []
    for module, extra, what in _OPTIONAL:
        found = importlib.util.find_spec(module) is not None
        fix = "" if found else f"pip install 'weightvault[{extra}]'"
        state = "installed" if found else "missing"
        out.append(Check(f"component {module}", "ok" if found else "warn", f"{what}: {state}", fix))
    swtpm = shutil.which("swtpm")
    out.append(
        Check(
            "swtpm",
            "ok" if swtpm else "warn",
            f"software TPM (tests, demos): {swtpm or 'missing'}",
            "" if swtpm else "apt-get install swtpm swtpm-tools",
        )
    )
    return out


def _gpu() -> Check:
    if importlib.util.find_spec("torch") is None:
        return Check("gpu", "warn", "torch is not installed, so no GPU path", "pip install 'weightvault[gpu]'")
    import torch

    if not torch.cuda.is_available():
        return Check("gpu", "ok", "no CUDA device: sealed weights decrypt on the CPU")
    name = torch.cuda.get_device_name(0)
    if importlib.util.find_spec("triton") is None:
        return Check(
            "gpu",
            "warn",
            f"{name}, but Triton is missing: decryption stays on the CPU",
            "pip install 'weightvault[gpu]'",
        )
    return Check("gpu", "ok", f"{name}: ChaCha20-Poly1305 files decrypt on the device")


def _tpm(tcti: str | None) -> Check:
    if tcti is None:
        device = Path("/dev/tpmrm0")
        if device.exists():
            ok = os.access(device, os.R_OK | os.W_OK)
            state = "is usable" if ok else "is not readable and writable"
            return Check(
                "tpm", "ok" if ok else "FAIL", f"{device} {state}", "" if ok else "add this user to the tss group"
            )
        return Check("tpm", "warn", "no TPM device (/dev/tpmrm0): TPM attestation needs one, or --tcti for swtpm")
    kind, _, rest = tcti.partition(":")
    if kind == "device":
        path = Path(rest or "/dev/tpmrm0")
        ok = path.exists() and os.access(path, os.R_OK | os.W_OK)
        return Check(
            "tpm",
            "ok" if ok else "FAIL",
            f"{path} {'is usable' if ok else 'is missing or not accessible'}",
            "" if ok else "check the device and its permissions (tss group)",
        )
    return Check("tpm", "ok", f"TCTI {kind} (reached at attestation)")


def _confidential_vm(root: Path = Path("/sys/kernel/config/tsm/report")) -> Check:
    """Whether this machine can produce SEV-SNP or TDX reports (configfs-tsm): informational."""
    if not root.is_dir():
        detail = f"not a confidential VM ({root} absent): --attester snp and tdx are unavailable"
        return Check("confidential vm", "ok", detail)
    if not os.access(root, os.W_OK):
        return Check("confidential vm", "FAIL", f"{root} exists but is not writable", "run the workload as root")
    return Check("confidential vm", "ok", f"{root} present: --attester snp or tdx can request reports")


def _broker(url: str | None, ca: Path | None) -> list[Check]:
    url = url or os.environ.get(BROKER_ENV)
    if not url:
        return [Check("broker", "warn", f"no broker to check (pass --broker or set {BROKER_ENV})")]
    import httpx

    try:
        reply = httpx.get(url.rstrip("/") + "/v1/health/ready", timeout=10.0, verify=str(ca) if ca else True)
    except httpx.HTTPError as exc:
        return [
            Check(
                "broker",
                "FAIL",
                f"{url} unreachable ({type(exc).__name__})",
                "check the URL, the network path and, for TLS, --ca",
            )
        ]
    checks = []
    if reply.status_code == 200:
        checks.append(Check("broker", "ok", f"{url} is ready"))
    else:
        try:
            doc = parse_json_object(reply.content, "answer", ConfigError)
            why = str(doc.get("detail") or doc.get("reason") or reply.status_code)
        except ConfigError:
            why = f"HTTP {reply.status_code}"
        fix = "see the broker's log and docs/operations.md"
        checks.append(Check("broker", "FAIL", f"{url} is not ready: {why}", fix))
    date = reply.headers.get("date")
    if date:
        skew = time.time() - parsedate_to_datetime(date).timestamp()
        status = "ok" if abs(skew) <= _MAX_SKEW_S else "FAIL"
        checks.append(
            Check(
                "clock",
                status,
                f"{skew:+.1f} s against the broker",
                "" if status == "ok" else "synchronise the clock (chrony, systemd-timesyncd)",
            )
        )
    return checks


def _token(url: str, token: str, ca: Path | None, now: float) -> Check:
    """Whether ``token`` authenticates at ``url``, as whom, and when it expires."""
    from weightvault.client.broker import BrokerClient
    from weightvault.errors import AuthenticationError, TokenExpiredError

    rotate = "an operator or your tenant admin runs: weightvault admin principal ID --rotate"
    try:
        with BrokerClient(url, token, verify=str(ca) if ca else True) as client:
            me = client.whoami()
    except TokenExpiredError:
        return Check("api token", "FAIL", "expired", rotate)
    except AuthenticationError:
        return Check(
            "api token", "FAIL", "not accepted (wrong, disabled or rotated)", "use the principal's current token"
        )
    except WeightVaultError as exc:
        return Check("api token", "FAIL", f"not checked: {exc}", "see the broker's log")
    who = f"{me.get('id')} ({me.get('role')}{', tenant ' + str(me['tenant']) if me.get('tenant') else ''})"
    expires = me.get("expires_at")
    if not isinstance(expires, int):
        return Check("api token", "ok", f"{who}; it does not expire")
    left = expires - now
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires))
    if left < _TOKEN_WARN_S:
        return Check("api token", "warn", f"{who}; it expires {when}, in {left / 86400:.1f} days", rotate)
    return Check("api token", "ok", f"{who}; it expires {when}, in {left / 86400:.0f} days")


def _secret_mode(path: Path) -> str | None:
    """Why ``path`` is not a usable secret file, or None."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return exc.strerror or "unreadable"
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"mode {stat.S_IMODE(mode):o}: others may read it"
    return None


def _config(config_path: Path) -> list[Check]:
    from weightvault.server.broker_main import read_config

    try:
        config = read_config(config_path)
    except ConfigError as exc:
        return [Check("config", "FAIL", str(exc), "fix broker.toml (docs/operations.md)")]
    checks = [Check("config", "ok", f"{config_path} parses (broker {config.broker_id})")]
    keys = config.keys
    secrets = [("root", keys.root)] if keys.root != "custody" else []
    secrets += [
        ("token_signing", keys.token_signing),
        ("registration", keys.registration),
        ("audit_log", keys.audit_log),
        ("audit_hash", keys.audit_hash),
    ]
    for name, value in secrets:
        path = config.path(value)
        problem = _secret_mode(path)
        checks.append(
            Check(
                f"key {name}",
                "FAIL" if problem else "ok",
                f"{path}: {problem or 'owner-only'}",
                f"chmod 600 {config.path(value)}" if problem and "mode" in problem else "",
            )
        )
    if keys.root == "custody":
        checks.append(Check("key root", "ok", "under M-of-N custody: the broker starts sealed"))
    try:
        from weightvault.broker.storage import BrokerStore

        store = BrokerStore(config.database_url)
        try:
            problem = store.ping()
        finally:
            store.close()
    except WeightVaultError as exc:
        problem = str(exc)
    checks.append(
        Check(
            "database",
            "FAIL" if problem else "ok",
            problem or "reachable and writable",
            "see docs/operations.md (storage)" if problem else "",
        )
    )
    return checks


def _render(checks: list[Check], echo: Callable[[str], None]) -> None:
    width = max(len(c.name) for c in checks)
    for c in checks:
        echo(f"{c.status:<4}  {c.name:<{width}}  {c.detail}")
        if c.fix:
            echo(f"{'':<4}  {'':<{width}}  fix: {c.fix}")


@click.command()
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path, dir_okay=False), help="A broker.toml to check."
)
@click.option("--broker", "url", help=f"A broker to reach (default ${BROKER_ENV}): readiness and clock skew.")
@click.option("--ca", type=click.Path(path_type=Path), help="CA bundle for a TLS broker.")
@click.option(
    "--token",
    help=f"An API token (or @FILE; default ${TOKEN_ENV}) to check at --broker: whose it is, and when it expires.",
)
@click.option("--tcti", help="The TPM to check, e.g. device:/dev/tpmrm0 (default: /dev/tpmrm0 if present).")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor(
    config_path: Path | None, url: str | None, ca: Path | None, token: str | None, tcti: str | None, as_json: bool
) -> None:
    """Check this machine (optional components, GPU, TPM), a broker (readiness, clock skew, an API
    token's expiry) and a broker.toml (key file modes, database), and say what to fix. Exits
    non-zero if a check failed."""
    checks = [*_components(), _gpu(), _tpm(tcti), _confidential_vm(), *_broker(url, ca)]
    url, token = url or os.environ.get(BROKER_ENV), token or os.environ.get(TOKEN_ENV)
    reachable = not any(c.name == "broker" and c.status == "FAIL" for c in checks)
    if url and token and reachable:
        try:
            checks.append(_token(url, read_token(token), ca, time.time()))
        except ConfigError as exc:  # a token file others may read, or none there
            checks.append(Check("api token", "FAIL", str(exc), "chmod 600 the token file"))
    if config_path is not None:
        checks += _config(config_path)
    if as_json:
        click.echo(json.dumps([_as_dict(c) for c in checks], indent=1))
    else:
        _render(checks, click.echo)
    failed = [c.name for c in checks if c.status == "FAIL"]
    if failed:
        raise ConfigError(f"{len(failed)} check(s) failed: {', '.join(failed)}")


def _as_dict(check: Check) -> dict[str, str]:
    return {"name": check.name, "status": check.status, "detail": check.detail, "fix": check.fix}
