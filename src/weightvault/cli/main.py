"""``weightvault``: seal, inspect, verify, unseal and rewrap model weights.

Every failure ends in one line on stderr, ``weightvault: <label>: <message>``,
and a distinct exit code (see :mod:`weightvault.cli.exits`). Outputs are written
atomically: a failed command leaves no partial file behind.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from weightvault import __version__
from weightvault.cli.admin import admin
from weightvault.cli.audit import audit, witness
from weightvault.cli.broker import broker
from weightvault.cli.compliance import compliance_report
from weightvault.cli.custody import approval, custody, person
from weightvault.cli.device import device
from weightvault.cli.doctor import doctor
from weightvault.cli.exits import EXIT_INTERNAL, exit_code_for
from weightvault.cli.models import load, publish
from weightvault.cli.options import (
    identities_from,
    json_option,
    local_or_remote,
    progress_bar,
    recipients_from,
    report,
    sign_key_option,
    sign_sealed_dir,
    size_of,
)
from weightvault.cli.prompts import PASSPHRASE_ENV, ask_passphrase
from weightvault.cli.sentinel import sentinel
from weightvault.cli.serving import gateway, sandbox, serve
from weightvault.crypto.aead import AEADSuite
from weightvault.crypto.keywrap import HPKEKem
from weightvault.errors import ConfigError, WeightVaultError
from weightvault.format.keys import FileKey
from weightvault.format.manifest import FileRole
from weightvault.format.preamble import CHUNK_LOG2_RANGE, DEFAULT_CHUNK_LOG2, FORMAT_VERSION
from weightvault.format.recipients import KEK, HPKEIdentity, Identity, Passphrase
from weightvault.sealing import (
    SealedFile,
    SealedModel,
    SealOptions,
    is_sealed_model_dir,
    rewrap_file,
    seal_model_dir,
    seal_safetensors,
    unseal_file,
    unseal_model_dir,
    write_key_file,
)

__all__ = ["cli", "main"]


def _fail(error: WeightVaultError) -> NoReturn:
    code, label = exit_code_for(error)
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    click.echo(f"weightvault: {label}: {message}", err=True)
    if error.remedy and os.environ.get("WEIGHTVAULT_HINTS", "1") != "0":
        click.echo(f"  hint: {error.remedy}", err=True)
    sys.exit(code)


def _emit_json(doc: object) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True))


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WeightVaultError as error:
            _fail(error)
        except KeyboardInterrupt:
            click.echo("weightvault: interrupted", err=True)
            sys.exit(130)
        except OSError as error:
            click.echo(
                f"weightvault: I/O error: {error.strerror or error}: {error.filename or ''}".rstrip(": "), err=True
            )
            sys.exit(EXIT_INTERNAL)


_identity_option = click.option(
    "-i",
    "--identity",
    "identities",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Key file that opens the file: a KEK, an HPKE private key, or a raw file key. Repeatable.",
)
_passphrase_option = click.option(
    "--passphrase", is_flag=True, help=f"Use a passphrase (from ${PASSPHRASE_ENV} or a prompt)."
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="weightvault")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars (shown only on a terminal anyway).")
def cli(quiet: bool) -> None:
    """Seal model weights so that only authorised holders can load them."""


@cli.group()
def keygen() -> None:
    """Generate keys."""


@keygen.command("kek")
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--force", is_flag=True, help="Replace an existing file.")
@json_option
def keygen_kek(out: Path, force: bool, as_json: bool) -> None:
    """Write a new 32-byte key-encryption key to OUT (mode 0600)."""
    key = KEK.generate()
    write_key_file(out, key, overwrite=force)
    report(as_json, f"wrote KEK {key.kid} to {out}", {"kind": "kek", "kid": key.kid, "private": out})


@keygen.command("hpke")
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--kem",
    type=click.Choice([k.value for k in HPKEKem]),
    default=HPKEKem.MLKEM768_X25519.value,
    show_default=True,
    help="Key encapsulation: post-quantum hybrid or classic X25519.",
)
@click.option("--force", is_flag=True, help="Replace existing files.")
@json_option
def keygen_hpke(out: Path, kem: str, force: bool, as_json: bool) -> None:
    """Write an HPKE private key to OUT and its public key to OUT.pub."""
    identity = HPKEIdentity.generate(HPKEKem(kem))
    public = out.with_name(out.name + ".pub")
    write_key_file(out, identity, overwrite=force)
    write_key_file(public, identity.recipient, overwrite=force)
    doc = {"kind": "hpke", "kem": kem, "kid": identity.kid, "private": out, "public": public}
    report(as_json, f"wrote {kem} key {identity.kid}: private {out}, public {public}", doc)


@cli.command()
@click.argument("src", type=click.Path(path_type=Path, exists=True))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option(
    "-r",
    "--recipient",
    "recipients",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Key file to wrap the file key for: a KEK or an HPKE public key. Repeatable.",
)
@_passphrase_option
@click.option(
    "--key-out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the raw file key here (mode 0600), e.g. to register it with a key broker.",
)
@click.option(
    "--suite",
    type=click.Choice([s.label for s in AEADSuite]),
    default=AEADSuite.AES_256_GCM.label,
    show_default=True,
    help="AEAD for the data; chacha20-poly1305 suits GPU decryption.",
)
@click.option(
    "--chunk-log2",
    type=click.IntRange(CHUNK_LOG2_RANGE.start, CHUNK_LOG2_RANGE.stop - 1),
    default=DEFAULT_CHUNK_LOG2,
    show_default=True,
    help="Chunk size as a power of two.",
)
@click.option("--sealed-metadata", is_flag=True, help="Encrypt the tensor table too (names, shapes, dtypes).")
@click.option("--seal-files", is_flag=True, help="Directories: seal every other file too, not just weights.")
@click.option("--exclude", multiple=True, help="Directories: glob of files to leave out. Repeatable.")
@click.option("--force", is_flag=True, help="Replace DST if it exists.")
@sign_key_option
@click.option(
    "--require-signature",
    "signer_key",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Seal SRC only if its OpenSSF model signature verifies under this EC public key (PEM).",
)
@click.option(
    "--signature",
    type=click.Path(path_type=Path, dir_okay=False),
    help="With --require-signature: SRC's signature file (default SRC/model.sig).",
)
@json_option
def seal(
    src: Path,
    dst: Path,
    recipients: tuple[Path, ...],
    passphrase: bool,
    key_out: Path | None,
    suite: str,
    chunk_log2: int,
    sealed_metadata: bool,
    seal_files: bool,
    exclude: tuple[str, ...],
    force: bool,
    sign_key: Path | None,
    signer_key: Path | None,
    signature: Path | None,
    as_json: bool,
) -> None:
    """Seal SRC (a .safetensors file or a model directory) into DST.

    With --require-signature, SRC must carry a valid OpenSSF model signature (the
    model_signing library's, by the holder of that key) or nothing is sealed; with
    --sign-key, the sealed directory is signed the same way, so that 'model_signing
    verify key' accepts it as published.
    """
    wrapped = recipients_from(recipients, passphrase)
    if not wrapped and key_out is None:
        raise ConfigError("nobody could open the result: pass -r/--recipient, --passphrase or --key-out")
    if (sign_key is not None or signer_key is not None) and not src.is_dir():
        raise ConfigError("OpenSSF model signatures (--sign-key, --require-signature) are for model directories")
    if sign_key is not None:
        from weightvault.sealing.signatures import require_model_signing

        require_model_signing()  # before anything is sealed
    if signer_key is not None:
        from weightvault.sealing.signatures import verify_model_dir

        verify_model_dir(src, signer_key, signature=signature)
    elif signature is not None:
        raise ConfigError("--signature goes with --require-signature")
    options = SealOptions(AEADSuite.from_label(suite), chunk_log2, sealed_metadata)
    file_key = FileKey.generate()
    try:  # the key is wiped whatever happens, a failed seal included
        if key_out is not None:
            write_key_file(key_out, file_key, overwrite=force)
        with progress_bar("sealing", size_of(src)) as progress:
            if src.is_dir():
                result = seal_model_dir(
                    src,
                    dst,
                    file_key=file_key,
                    recipients=wrapped,
                    options=options,
                    seal_files=seal_files,
                    exclude=exclude,
                    overwrite=force,
                    progress=progress,
                )
                lines = [f"sealed {len(result.sealed)} file(s) of {src} into {dst} ({options.suite.label})"]
                doc: dict[str, Any] = {"files": len(result.sealed)}
                if sign_key is not None:
                    doc["signature"] = sign_sealed_dir(dst, sign_key)
                    lines.append(f"signed {dst} (OpenSSF model signing): {doc['signature']}")
            else:
                one = seal_safetensors(
                    src, dst, file_key=file_key, recipients=wrapped, options=options, overwrite=force, progress=progress
                )
                lines = [f"sealed {one.tensors} tensors of {src} into {dst} ({options.suite.label})"]
                doc = {"tensors": one.tensors, "file_id": one.file_id.hex()}
    finally:
        file_key.wipe()
    if signer_key is not None:
        lines.insert(0, f"{src}: OpenSSF model signature verified")
    doc.update(source=src, sealed=dst, suite=options.suite.label, signature_verified=signer_key is not None)
    report(as_json, lines, doc)


@cli.command()
@click.argument("src", type=click.Path(path_type=Path, exists=True))
@click.argument("dst", type=click.Path(path_type=Path))
@_identity_option
@_passphrase_option
@click.option("--force", is_flag=True, help="Replace DST if it exists.")
@json_option
def unseal(src: Path, dst: Path, identities: tuple[Path, ...], passphrase: bool, force: bool, as_json: bool) -> None:
    """Restore the original file or model directory from SRC into DST."""
    keys = identities_from(identities, passphrase)
    with progress_bar("unsealing", size_of(src)) as progress:
        if src.is_dir():
            unseal_model_dir(src, dst, keys, overwrite=force, progress=progress)
        else:
            unseal_file(src, dst, keys, overwrite=force, progress=progress)
    report(as_json, f"unsealed {src} into {dst}", {"sealed": src, "unsealed": dst})


def _file_report(path: Path, keys: FileKey | list[Identity] | None) -> dict[str, Any]:
    with SealedFile(path) as sealed:
        p = sealed.preamble
        report: dict[str, Any] = {
            "path": str(path),
            "format_version": FORMAT_VERSION,
            "suite": p.suite.label,
            "file_id": p.file_id.hex(),
            "chunk_bytes": p.chunk_size,
            "sealed_metadata": p.sealed_metadata,
            "data_bytes": p.data_len,
            "recipients": [s.describe() for s in sealed.recipients.stanzas],
        }
        if keys is not None:
            with sealed.unlock(keys) as opened:
                table = opened.table
                report["authenticated"] = True
        elif not p.sealed_metadata:
            table = sealed.public_table()
            report["authenticated"] = False
        else:
            report["authenticated"] = False
            report["tensors"] = None
            return report
        report["kind"] = table.kind.value
        report["metadata"] = dict(table.metadata)
        report["tensors"] = [
            {"name": t.name, "dtype": t.dtype.name, "shape": list(t.shape), "nbytes": t.nbytes} for t in table.tensors
        ]
        return report


@cli.command()
@click.argument("path", type=click.Path(path_type=Path, exists=True))
@_identity_option
@_passphrase_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def inspect(path: Path, identities: tuple[Path, ...], passphrase: bool, as_json: bool) -> None:
    """List the tensors and recipients of a sealed file or model directory.

    Without a key the tensor table is shown unauthenticated (when it is public).
    """
    keys = identities_from(identities, passphrase) if identities or passphrase else None
    if path.is_dir():
        from weightvault.sealing.model_dir import member_path, read_manifest

        manifest = read_manifest(path)
        if keys is not None:
            SealedModel.open(path, keys)
        reports = [
            _file_report(member_path(path, f), keys)
            if f.role is FileRole.SEALED
            else {"path": str(path / f.path), "public": True}
            for f in manifest.files
        ]
        doc: dict[str, Any] = {"model": str(path), "authenticated": keys is not None, "files": reports}
    else:
        doc = _file_report(path, keys)
    if as_json:
        _emit_json(doc)
        return
    for entry in doc.get("files", [doc]):
        if entry.get("public"):
            click.echo(f"{entry['path']}: carried in the clear")
            continue
        state = "authenticated" if entry["authenticated"] else "UNAUTHENTICATED (no key given)"
        version, suite, size = entry["format_version"], entry["suite"], entry["data_bytes"]
        click.echo(f"{entry['path']}: sealed v{version}, {suite}, {size} data bytes, table {state}")
        for r in entry["recipients"]:
            click.echo(f"  recipient: {r}")
        if entry["tensors"] is None:
            click.echo("  tensor table is sealed; pass a key to list it")
            continue
        for t in entry["tensors"]:
            click.echo(f"  {t['name']}  {t['dtype']}  {t['shape']}")


@cli.command()
@click.argument("path", callback=local_or_remote)
@_identity_option
@_passphrase_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def verify(path: str | Path, identities: tuple[Path, ...], passphrase: bool, as_json: bool) -> None:
    """Check every tag of a sealed file or model directory, writing no plaintext.

    PATH may be an http://, https:// or s3:// URL: the check then reads every byte from there.
    """
    from weightvault.sealing.model_dir import names_model_dir
    from weightvault.sealing.sources import display, is_remote

    keys = identities_from(identities, passphrase)
    with progress_bar("verifying", 0 if is_remote(path) else size_of(Path(path))) as progress:
        if names_model_dir(path):
            model = SealedModel.open(path, keys)
            model.verify(progress)
            files = len(model.manifest.files)
        else:
            with SealedFile(path) as sealed, sealed.unlock(keys) as opened:
                opened.verify(progress)
            files = 1
    if as_json:
        _emit_json({"path": display(path), "ok": True, "files": files})
    else:
        click.echo(f"OK: {display(path)} verified ({files} file(s), every chunk authenticated)")


@cli.command()
@click.argument("path", type=click.Path(path_type=Path, exists=True))
@_identity_option
@_passphrase_option
@click.option(
    "--add",
    "add",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Recipient key file to add (KEK or HPKE public key). Repeatable.",
)
@click.option("--add-passphrase", is_flag=True, help="Add a passphrase recipient (asks for a new passphrase).")
@click.option("--remove", multiple=True, help="Key id or stanza type to remove. Repeatable.")
@click.option("--replace-all", is_flag=True, help="Drop every existing recipient before adding.")
@json_option
def rewrap(
    path: Path,
    identities: tuple[Path, ...],
    passphrase: bool,
    add: tuple[Path, ...],
    add_passphrase: bool,
    remove: tuple[str, ...],
    replace_all: bool,
    as_json: bool,
) -> None:
    """Add, remove or rotate recipients of PATH without re-encrypting the data."""
    keys = identities_from(identities, passphrase)
    new = recipients_from(add, False)
    if add_passphrase:
        new.append(Passphrase(ask_passphrase(confirm=True)))
    if path.is_dir():
        if not is_sealed_model_dir(path):
            raise ConfigError(f"{path} is not a sealed model directory")
        model = SealedModel.open(path, keys)
        targets = [path / f.path for f in model.manifest.sealed()]
        keys = model.file_key
    else:
        targets = [path]
    lines, files = [], []
    for target in targets:
        result = rewrap_file(target, keys, add=new, remove=remove, replace_all=replace_all)
        grown = " (recipients region grew)" if result.grew else ""
        lines.append(f"{target}: {len(result.stanzas)} recipient(s){grown}")
        files.append({"path": target, "recipients": [s.describe() for s in result.stanzas], "grew": result.grew})
    report(as_json, lines, {"files": files})


@cli.command()
@click.argument("src", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.argument("dst", type=click.Path(path_type=Path))
@_identity_option
@_passphrase_option
@click.option(
    "-r",
    "--recipient",
    "recipients",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Key file to wrap the NEW file key for. Repeatable.",
)
@click.option("--key-out", type=click.Path(path_type=Path, dir_okay=False), help="Also write the new file key here.")
@click.option("--force", is_flag=True, help="Replace DST if it exists.")
@json_option
def reseal(
    src: Path,
    dst: Path,
    identities: tuple[Path, ...],
    passphrase: bool,
    recipients: tuple[Path, ...],
    key_out: Path | None,
    force: bool,
    as_json: bool,
) -> None:
    """Re-encrypt SRC under a new file key (new file id); plaintext never touches the disk."""
    from weightvault.sealing import reseal_file

    keys = identities_from(identities, passphrase)
    wrapped = recipients_from(recipients, False)
    if not wrapped and key_out is None:
        raise ConfigError("nobody could open the result: pass -r/--recipient or --key-out")
    file_key = FileKey.generate()
    try:
        if key_out is not None:
            write_key_file(key_out, file_key, overwrite=force)
        result = reseal_file(src, dst, keys, file_key=file_key, recipients=wrapped, overwrite=force)
    finally:
        file_key.wipe()
    text = f"resealed {result.tensors} tensors of {src} into {dst} under a new file key"
    report(as_json, text, {"source": src, "resealed": dst, "tensors": result.tensors, "file_id": result.file_id.hex()})


for _command in (
    audit,
    witness,
    broker,
    admin,
    publish,
    load,
    device,
    person,
    custody,
    approval,
    serve,
    sandbox,
    gateway,
    sentinel,
    compliance_report,
    doctor,
):
    cli.add_command(_command)


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL: commands, options and choices complete on Tab.

    \b
    bash:  eval "$(weightvault completion bash)"      (in ~/.bashrc)
    zsh:   eval "$(weightvault completion zsh)"       (in ~/.zshrc)
    fish:  weightvault completion fish > ~/.config/fish/completions/weightvault.fish
    """
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    assert completer is not None  # the three choices are click's own
    click.echo(completer(cli, {}, "weightvault", "_WEIGHTVAULT_COMPLETE").source())


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    # The TPM stack logs to stderr by itself; the CLI reports TPM failures as one line.
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    cli.main(args=list(argv) if argv is not None else None, prog_name="weightvault")
