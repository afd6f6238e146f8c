"""OpenSSF model signing (the ``model_signing`` library) on model directories, plain or sealed.

A signature is a Sigstore bundle over an in-toto statement that lists every file of the
directory with its SHA-256 (OpenSSF's "model signing" v1). Signing a *sealed* directory
signs what is published: the sealed weights, weightvault's manifest and the public files,
so any holder of the public key can check with ``model_signing verify`` that nothing was
added, removed or changed since, without any key of weightvault. Verifying a *plain*
directory before sealing it (``weightvault seal --require-signature``) checks the
provenance of what goes in.

The signature lives in the directory as ``model.sig`` (the library's default name) unless
another path is given, and is left out of what it signs. Here keys are elliptic-curve
keys in PEM files (the library's "key" method): signing needs no network. Sigstore and
certificate signing stay with the library's own command for those who have them.

The library is optional (``pip install 'weightvault[signing]'``): without it, these
functions raise ConfigError with that hint.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any, Final

from weightvault.errors import ConfigError, ModelSignatureError
from weightvault.files import fsync_directory

__all__ = ["SIGNATURE_NAME", "require_model_signing", "sign_model_dir", "signed_files", "verify_model_dir"]

#: Where ``model_signing`` puts and looks for a directory's signature by default.
SIGNATURE_NAME: Final = "model.sig"
# The library's refusals carry repr()s of lists of messages: quotes may come escaped.
_HASH_MISMATCH: Final = re.compile(r"Hash mismatch for \\*'([^'\\]+)")
_EXTRA: Final = re.compile(r"Extra files found in model [^:]*: ([^\"'\]\\]+)")
_MISSING: Final = re.compile(r"Files missing from model [^:]*: ([^\"'\]\\]+)")


def require_model_signing() -> None:
    """Raises ConfigError (with the install hint) unless the model_signing library is installed:
    commands check before they seal anything."""
    _library()


def _library() -> Any:
    try:
        import model_signing
    except ImportError as exc:
        raise ConfigError("OpenSSF model signing needs model_signing: pip install 'weightvault[signing]'") from exc
    return model_signing


def _hashing(ms: Any, directory: Path, *ignored: Path) -> Any:
    """Hash every file of ``directory`` but the signatures named (those inside it), and no .git."""
    root = directory.resolve()
    inside = []
    for path in ignored:
        try:
            inside.append(path.resolve().relative_to(root))
        except ValueError:
            continue
    return ms.hashing.Config().set_ignored_paths(paths=inside, ignore_git_paths=True)


def sign_model_dir(
    directory: Path, private_key: Path, *, signature: Path | None = None, password: str | None = None
) -> Path:
    """Sign every file of ``directory`` with the EC private key in PEM file ``private_key``; returns
    where the signature was written (atomically: ``directory``/model.sig by default).

    Raises:
        ConfigError: the library is missing, or the key cannot be read or used.
    """
    ms = _library()
    target = signature or directory / SIGNATURE_NAME
    partial = target.with_name(f".{target.name}.{secrets.token_hex(8)}.partial")
    try:
        config = ms.signing.Config().use_elliptic_key_signer(private_key=private_key, password=password)
        config.set_hashing_config(_hashing(ms, directory, target, partial)).sign(directory, partial)
        os.replace(partial, target)
        fsync_directory(target.parent)
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(f"cannot sign {directory} with {private_key}: {_first_line(exc)}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return target


def verify_model_dir(directory: Path, public_key: Path, *, signature: Path | None = None) -> None:
    """Check ``directory`` against its OpenSSF signature and the EC public key in PEM file ``public_key``:
    the signature verifies under that key, and lists exactly the directory's files with their digests.

    Raises:
        ModelSignatureError: no signature, another key, a file added, removed or changed, or a
            damaged signature.
        ConfigError: the library is missing, or the public key cannot be read.
    """
    ms = _library()
    try:
        key_text = public_key.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{public_key}: cannot read the public key ({exc.strerror})") from exc
    if b"PUBLIC KEY" not in key_text:
        raise ConfigError(f"{public_key}: not a PEM public key")
    target = signature or directory / SIGNATURE_NAME
    if not target.is_file():
        raise ModelSignatureError(f"{directory} has no OpenSSF signature ({target} is missing)")
    try:
        config = ms.verifying.Config().use_elliptic_key_verifier(public_key=public_key)
        config.set_hashing_config(_hashing(ms, directory, target)).verify(directory, target)
    except Exception as exc:  # the library raises ValueError, JSONDecodeError, KeyError...: all a refusal
        raise ModelSignatureError(f"{directory}: {_reason(exc)}") from exc


_MAX_SIGNATURE_BYTES: Final = 1 << 20


def signed_files(signature: bytes, public_key: Path) -> dict[str, tuple[str, str]]:
    """What an OpenSSF signature says, once it verifies under the EC public key in PEM file
    ``public_key``: ``{path: (digest algorithm, hex digest)}`` for every file it lists. Checks
    the signature only, not any file (for a broker that has the manifest but not the weights).

    Raises:
        ModelSignatureError: another key, a damaged or oversized signature, not an OpenSSF one.
        ConfigError: the library is missing.
    """
    _library()
    # The library's public API verifies a signature only together with files on disk; its key
    # verifier (the same code ``model_signing verify key`` runs) gives the signed file list.
    from model_signing._signing import sign_ec_key, sign_sigstore_pb

    if len(signature) > _MAX_SIGNATURE_BYTES:
        raise ModelSignatureError("the signature is over 1 MiB: not an OpenSSF model signature")
    with tempfile.TemporaryDirectory(prefix="wv-signature-") as tmp:
        path = Path(tmp) / SIGNATURE_NAME
        path.write_bytes(signature)
        try:
            verifier = sign_ec_key.Verifier(public_key)
        except (ValueError, TypeError, OSError) as exc:
            raise ConfigError(f"{public_key}: not an EC public key in PEM ({_first_line(exc)})") from exc
        try:
            manifest = verifier.verify(sign_sigstore_pb.Signature.read(path))
        except Exception as exc:  # ValueError, KeyError, JSONDecodeError, InvalidSignature...: all a refusal
            raise ModelSignatureError(_reason(exc)) from exc
    return {rd.identifier: (rd.digest.algorithm, rd.digest.digest_hex) for rd in manifest.resource_descriptors()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _reason(exc: BaseException) -> str:
    """The library's refusal in one short line (its own messages carry whole digests)."""
    text = str(exc)
    if text.startswith("Key mismatch"):
        return "the signature was made with another key"
    for pattern, what in ((_HASH_MISMATCH, "changed after signing"), (_EXTRA, "added after signing"),
                          (_MISSING, "removed after signing")):  # fmt: skip
        found = pattern.search(text)
        if found:
            return f"{found.group(1)} {what}"
    if "Signature mismatch" in text or "signature" in text.lower():
        return f"the signature does not verify ({_first_line(exc)})"
    return f"the signature is damaged or not an OpenSSF model signature ({type(exc).__name__})"
