"""What a new user meets when something is wrong: one line, a documented exit code, a command that exists."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.databases import init_options
from tests.e2e.servers import serve_broker
from weightvault.cli.exits import EXIT_CODES
from weightvault.errors import ManifestError

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def wv(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    proc = subprocess.run(
        [sys.executable, "-m", "weightvault", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


def _one_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The failure is exit ``code`` with one line (and at most a hint), never a traceback."""
    assert code == proc.returncode, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, proc.stderr
    assert lines[0].startswith("weightvault: ")
    assert "Traceback" not in proc.stderr
    return proc.stderr


@pytest.fixture
def sharded(tmp_path: Path) -> tuple[Path, Path]:
    """A two-shard model sealed to a KEK: (sealed directory, KEK file)."""
    plain = tmp_path / "m"
    plain.mkdir()
    save_file({"a": np.arange(10, dtype=np.float32)}, str(plain / "model-00001-of-00002.safetensors"))
    save_file({"b": np.arange(5, dtype=np.float32)}, str(plain / "model-00002-of-00002.safetensors"))
    index = {
        "metadata": {},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
    }
    (plain / "model.safetensors.index.json").write_text(json.dumps(index))
    kek = tmp_path / "ops.kek"
    wv("keygen", "kek", kek)
    sealed = tmp_path / "sealed"
    wv("seal", plain, sealed, "-r", kek)
    return sealed, kek


def test_a_deleted_shard_is_a_manifest_error(tmp_path: Path, sharded: tuple[Path, Path]) -> None:
    """verify, inspect and unseal exit 15 (manifest invalid), and the loaders raise ManifestError."""
    sealed, kek = sharded
    (sealed / "model-00002-of-00002.safetensors.wvlt").unlink()
    for args in (("verify", sealed, "-i", kek), ("inspect", sealed), ("unseal", sealed, tmp_path / "out", "-i", kek)):
        err = _one_line(wv(*args, check=False), 15)
        assert "model-00002-of-00002.safetensors.wvlt is listed in the model manifest but missing" in err
    assert not (tmp_path / "out").exists()
    from weightvault import read_key_file
    from weightvault.sealing import SealedModel

    with pytest.raises(ManifestError, match="missing"):
        SealedModel.open(sealed, [read_key_file(kek)]).verify()  # type: ignore[list-item]


def test_a_key_file_path_instead_of_a_key_says_what_to_do(sharded: tuple[Path, Path]) -> None:
    """load_file(path, "ops.kek") is a TypeError naming read_key_file, not an AttributeError."""
    from weightvault.loaders import numpy as wv_numpy

    sealed, kek = sharded
    shard = sealed / "model-00001-of-00002.safetensors.wvlt"
    with pytest.raises(TypeError, match="read_key_file"):
        wv_numpy.load_file(shard, str(kek))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a key"):
        wv_numpy.load_file(shard, [object()])  # type: ignore[list-item]


def test_a_safetensors_file_of_no_tensors_seals_and_unseals(tmp_path: Path) -> None:
    """A valid file with zero tensors round-trips byte for byte instead of failing as 'tampered'."""
    empty = tmp_path / "empty.safetensors"
    save_file({}, str(empty), metadata={"note": "no tensors"})
    kek = tmp_path / "k.kek"
    wv("keygen", "kek", kek)
    wv("seal", empty, tmp_path / "e.wvlt", "-r", kek)
    wv("verify", tmp_path / "e.wvlt", "-i", kek)
    wv("unseal", tmp_path / "e.wvlt", tmp_path / "back.safetensors", "-i", kek)
    assert empty.read_bytes() == (tmp_path / "back.safetensors").read_bytes()
    report = json.loads(wv("inspect", tmp_path / "e.wvlt", "--json").stdout)
    assert (2, []) == (report["format_version"], report["tensors"])


@pytest.mark.parametrize(
    ("edit", "names"),
    [
        (("token_ttl_seconds = 300", "token_ttl_seconds = 600"), "token_ttl_seconds = 600"),
        (("challenge_ttl_seconds = 60", "challenge_ttl_seconds = 120"), "challenge_ttl_seconds = 120"),
        (("rate_per_second = 200", 'rate_per_second = "fast"'), "rate_per_second = 'fast'"),
        (("burst = 400", "burst = 400\nrate_per_secnd = 5"), "rate_per_secnd"),
        (('audit_db = "data/audit.db"', "audit_db = 7"), "audit_db = 7"),
    ],
)
def test_bad_broker_settings_are_one_line_errors(tmp_path: Path, edit: tuple[str, str], names: str) -> None:
    """A bad value in broker.toml names the file, the key and what is allowed; exit 60, no traceback."""
    base = tmp_path / "b"
    wv("broker", "init", base, *init_options())
    config = base / "broker.toml"
    text = config.read_text()
    assert edit[0] in text
    config.write_text(text.replace(edit[0], edit[1], 1))
    err = _one_line(wv("broker", "serve", "--config", config, check=False), 60)
    assert names in err
    assert str(config) in err


@pytest.mark.parametrize("existing", [False, True])
def test_broker_init_against_an_unreachable_database_leaves_nothing_behind(tmp_path: Path, existing: bool) -> None:
    """Exit 54 in one line, the password nowhere; what init created is gone (and only that), so
    the same command works once the database does."""
    from tests.e2e.servers import free_port

    base = tmp_path / "b"
    if existing:
        base.mkdir()
        (base / "notes.txt").write_text("the operator's own file")
    url = f"postgresql://wv:s3cret-pw@127.0.0.1:{free_port()}/weightvault"
    proc = wv("broker", "init", base, "--database-url", url, check=False)
    err = _one_line(proc, 54)
    assert "s3cret-pw" not in proc.stderr + proc.stdout
    assert "database" in err
    if existing:
        assert [base / "notes.txt"] == sorted(base.rglob("*"))
    else:
        assert not base.exists()
    wv("broker", "init", base, *init_options())
    assert (base / "operator.token").is_file()


@pytest.mark.parametrize("url", ["mysql://u@h/db", "postgresql+psycopg2://u@h/db", "file:///etc/passwd"])
def test_broker_init_refuses_other_database_engines(tmp_path: Path, url: str) -> None:
    err = _one_line(wv("broker", "init", tmp_path / "b", "--database-url", url, check=False), 60)
    assert "storage URL" in err
    assert not (tmp_path / "b").exists()


def test_rotating_and_disabling_a_principal_from_the_command_line(tmp_path: Path) -> None:
    """admin principal --rotate and --disable stop the principal's old token at once."""
    base = tmp_path / "b"
    wv("broker", "init", base, *init_options())
    with serve_broker(base) as url:
        op = ["--broker", url, "--token", f"@{base / 'operator.token'}"]
        wv("admin", "tenant", "create", "acme", *op)
        wv("admin", "principal", "acme-wl", "--role", "workload", "--tenant", "acme", "--out", tmp_path / "wl", *op)
        assert 0o600 == (tmp_path / "wl").stat().st_mode & 0o777
        wl = ["--broker", url, "--token", f"@{tmp_path / 'wl'}"]
        # The workload rotates its own token into its own token file; a copy of the old one is refused.
        old = tmp_path / "wl.old"
        old.write_bytes((tmp_path / "wl").read_bytes())
        old.chmod(0o600)
        refused = wv("admin", "principal", "acme-wl", "--rotate", "--out", tmp_path / "wl", *wl, check=False)
        assert "already exists (pass --force" in _one_line(refused, 60)
        assert old.read_text() == (tmp_path / "wl").read_text()  # refused before the broker was asked
        wv("admin", "principal", "acme-wl", "--rotate", "--out", tmp_path / "wl", "--force", *wl)
        assert 0o600 == (tmp_path / "wl").stat().st_mode & 0o777
        assert old.read_text() != (tmp_path / "wl").read_text()
        stale = ["--broker", url, "--token", f"@{old}"]
        err = _one_line(wv("admin", "tenant", "list", *stale, check=False), EXIT_CODES[_auth_error()][0])
        assert "authentication failed" in err
        listed = json.loads(wv("admin", "principal", "acme-wl", "--rotate", "--json", *op).stdout)
        assert {"principal": "acme-wl", "rotated": True} == {k: listed[k] for k in ("principal", "rotated")}
        (tmp_path / "wl").write_text(listed["token"] + "\n")
        wv("admin", "principal", "acme-wl", "--disable", *op)
        err = _one_line(wv("admin", "tenant", "list", *wl, check=False), EXIT_CODES[_auth_error()][0])
        assert "authentication failed" in err
        _one_line(wv("admin", "principal", "acme-x", *op, check=False), 60)  # neither --role nor --disable
        _one_line(wv("admin", "principal", "acme-wl", "--rotate", "--disable", *op, check=False), 60)
        # A token that expires: past it, its own exit code and a line that says so.
        short = tmp_path / "short"
        args = ("--role", "workload", "--tenant", "acme", "--out", short)
        wv("admin", "principal", "acme-short", *args, "--expires-in", "2s", *op)
        time.sleep(2.5)
        err = _one_line(wv("admin", "tenant", "list", "--broker", url, "--token", f"@{short}", check=False), 91)
        assert "API token expired" in err
        bad = wv("admin", "principal", "acme-y", *args[:-2], "--expires-in", "soon", *op, check=False)
        assert "not a duration" in _one_line(bad, 60)


def _auth_error() -> type:
    from weightvault.errors import AuthenticationError

    return AuthenticationError


def test_audit_db_paths_with_uri_characters(tmp_path: Path) -> None:
    """A log database whose path holds '?' and '#' is read as that file; nothing stray is created."""
    from weightvault.auditlog import AuditEvent, AuditLog, NoteSigner
    from weightvault.crypto.signing import Ed25519Signer

    odd = tmp_path / "logs?mode=rw#1"
    odd.mkdir()
    db = odd / "audit.db"
    with AuditLog(db, NoteSigner("weightvault.test/audit", Ed25519Signer(b"\x11" * 32))) as log:
        log.append(AuditEvent(type="test.event", tenant="acme", actor="a"))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    shown = wv("audit", "show", "--db", db, "--json").stdout.splitlines()
    assert 1 == len(shown)
    assert before == sorted(p.name for p in tmp_path.rglob("*"))


def test_the_readme_lists_every_exit_code() -> None:
    """Every exit code the CLI can return appears in the README's table with its label."""
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|", readme))
    for code, label in EXIT_CODES.values():
        assert str(code) in rows, f"exit code {code} ({label}) is not in the README"
        assert label == rows[str(code)], code


def test_broker_init_takes_ek_intermediates(tmp_path: Path) -> None:
    """--tpm-intermediates goes into [verifiers.tpm] ek_intermediates, and the configuration loads."""
    from weightvault.server.broker_main import read_config

    root, middle = tmp_path / "root.pem", tmp_path / "int.pem"
    root.write_text("root")
    middle.write_text("intermediate")
    wv("broker", "init", tmp_path / "b", "--tpm-roots", root, "--tpm-intermediates", middle, *init_options())
    config = read_config(tmp_path / "b" / "broker.toml")
    assert config.tpm is not None
    assert [str(middle.resolve())] == config.tpm["ek_intermediates"]
    assert "tpm" in config.allow
