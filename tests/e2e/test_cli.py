"""The weightvault command line, run as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from weightvault.cli.exits import EXIT_CODES
from weightvault.errors import WeightVaultError

pytestmark = pytest.mark.e2e


def wv(*args: str | Path, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "weightvault", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    out = {"kek": tmp_path / "kek.json", "hpke": tmp_path / "id.json"}
    wv("keygen", "kek", out["kek"])
    wv("keygen", "hpke", out["hpke"])
    out["hpke_pub"] = tmp_path / "id.json.pub"
    return out


def test_keygen_writes_private_files_0600(keys: dict[str, Path]) -> None:
    """Secret key files are mode 0600; the public key is readable."""
    assert 0o600 == keys["kek"].stat().st_mode & 0o777
    assert 0o600 == keys["hpke"].stat().st_mode & 0o777
    assert 0o644 == keys["hpke_pub"].stat().st_mode & 0o777
    assert "weightvault.hpke-public-key" == json.loads(keys["hpke_pub"].read_text())["kind"]


def test_seal_inspect_verify_unseal_file(tmp_path: Path, plain_file: Path, keys: dict[str, Path]) -> None:
    """A full CLI cycle on one file restores identical bytes; inspect and verify speak JSON."""
    sealed = tmp_path / "m.wvlt"
    wv("seal", plain_file, sealed, "-r", keys["kek"], "-r", keys["hpke_pub"], "--suite", "chacha20-poly1305")
    report = json.loads(wv("inspect", sealed, "--json").stdout)
    assert report["authenticated"] is False
    assert "chacha20-poly1305" == report["suite"]
    assert {"layer.0.weight", "layer.0.bias", "layer.1.weight", "mask", "scalar", "empty"} == {
        t["name"] for t in report["tensors"]
    }
    assert 2 == len(report["recipients"])
    authed = json.loads(wv("inspect", sealed, "-i", keys["hpke"], "--json").stdout)
    assert authed["authenticated"] is True
    assert {"ok": True, "files": 1, "path": str(sealed)} == json.loads(
        wv("verify", sealed, "-i", keys["kek"], "--json").stdout
    )
    out = tmp_path / "back.safetensors"
    wv("unseal", sealed, out, "-i", keys["hpke"])
    assert plain_file.read_bytes() == out.read_bytes()


def test_sealed_metadata_hides_the_table(tmp_path: Path, plain_file: Path, keys: dict[str, Path]) -> None:
    """With --sealed-metadata, inspect without a key shows no tensor names."""
    sealed = tmp_path / "m.wvlt"
    wv("seal", plain_file, sealed, "-r", keys["kek"], "--sealed-metadata")
    assert b"layer.0.weight" not in sealed.read_bytes()
    report = json.loads(wv("inspect", sealed, "--json").stdout)
    assert report["tensors"] is None
    assert 6 == len(json.loads(wv("inspect", sealed, "-i", keys["kek"], "--json").stdout)["tensors"])


def test_passphrase_via_environment(tmp_path: Path, plain_file: Path) -> None:
    """--passphrase reads WEIGHTVAULT_PASSPHRASE when there is no terminal; a wrong one fails with code 21."""
    sealed = tmp_path / "m.wvlt"
    wv("seal", plain_file, sealed, "--passphrase", env={"WEIGHTVAULT_PASSPHRASE": "tr0ub4dor"})
    wv("verify", sealed, "--passphrase", env={"WEIGHTVAULT_PASSPHRASE": "tr0ub4dor"})
    bad = wv("verify", sealed, "--passphrase", env={"WEIGHTVAULT_PASSPHRASE": "nope"}, check=False)
    assert 21 == bad.returncode


def test_model_directory_and_rewrap(tmp_path: Path, minilm_dir: Path, keys: dict[str, Path]) -> None:
    """Seal the MiniLM directory, rewrap it to a new key, and unseal with that key only."""
    sealed = tmp_path / "sealed"
    wv("seal", minilm_dir, sealed, "-r", keys["kek"])
    wv("verify", sealed, "-i", keys["kek"])
    wv("rewrap", sealed, "-i", keys["kek"], "--add", keys["hpke_pub"], "--remove", "kek")
    denied = wv("verify", sealed, "-i", keys["kek"], check=False)
    assert 21 == denied.returncode
    out = tmp_path / "restored"
    wv("unseal", sealed, out, "-i", keys["hpke"])
    assert (minilm_dir / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    assert (minilm_dir / "1_Pooling" / "config.json").read_bytes() == (out / "1_Pooling" / "config.json").read_bytes()


@pytest.mark.parametrize(
    ("region", "code"),
    [("data", 14), ("header", 13), ("magic", 11)],
)
def test_tampered_file_gives_one_line_and_distinct_code(
    tmp_path: Path, plain_file: Path, keys: dict[str, Path], region: str, code: int
) -> None:
    """Each kind of damage ends in one 'weightvault: <label>: <message>' line (plus a hint) and its own code."""
    sealed = tmp_path / "m.wvlt"
    wv("seal", plain_file, sealed, "-r", keys["kek"])
    data = bytearray(sealed.read_bytes())
    offset = {"data": len(data) - 3, "header": 8192 + 10, "magic": 1}[region]
    data[offset] ^= 1
    sealed.write_bytes(bytes(data))
    out = tmp_path / "never.safetensors"
    proc = wv("unseal", sealed, out, "-i", keys["kek"], check=False)
    assert code == proc.returncode
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("weightvault: ")
    assert len(lines) <= 2
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert [] == [p.name for p in tmp_path.iterdir() if ".partial" in p.name]


def test_failed_unseal_of_a_directory_leaves_nothing(tmp_path: Path, minilm_dir: Path, keys: dict[str, Path]) -> None:
    """A corrupt shard aborts a directory unseal with no output directory and no temporary left."""
    sealed = tmp_path / "sealed"
    wv("seal", minilm_dir, sealed, "-r", keys["kek"])
    weights = sealed / "model.safetensors.wvlt"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 1
    weights.write_bytes(bytes(data))
    proc = wv("unseal", sealed, tmp_path / "out", "-i", keys["kek"], check=False)
    assert 14 == proc.returncode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id.json", "id.json.pub", "kek.json", "sealed"]


def test_usage_errors(tmp_path: Path, plain_file: Path, keys: dict[str, Path]) -> None:
    """Missing recipients, existing outputs, public keys as identities and missing files are clear errors."""
    proc = wv("seal", plain_file, tmp_path / "x.wvlt", check=False)
    assert 60 == proc.returncode
    assert "nobody could open" in proc.stderr
    sealed = tmp_path / "m.wvlt"
    wv("seal", plain_file, sealed, "-r", keys["kek"])
    again = wv("seal", plain_file, sealed, "-r", keys["kek"], check=False)
    assert 60 == again.returncode
    assert "already exists" in again.stderr
    pub = wv("verify", sealed, "-i", keys["hpke_pub"], check=False)
    assert 60 == pub.returncode
    missing = wv("verify", tmp_path / "nope.wvlt", "-i", keys["kek"], check=False)
    assert 2 == missing.returncode
    loose = tmp_path / "loose.json"
    loose.write_text(keys["kek"].read_text())
    loose.chmod(0o644)
    assert 60 == wv("verify", sealed, "-i", loose, check=False).returncode


def test_wrong_file_key_exit_code(tmp_path: Path, plain_file: Path, keys: dict[str, Path]) -> None:
    """A raw file key from another seal fails with the wrong-key code."""
    a, b = tmp_path / "a.wvlt", tmp_path / "b.wvlt"
    wv("seal", plain_file, a, "--key-out", tmp_path / "a.key")
    wv("seal", plain_file, b, "--key-out", tmp_path / "b.key")
    wv("verify", a, "-i", tmp_path / "a.key")
    assert 22 == wv("verify", a, "-i", tmp_path / "b.key", check=False).returncode


def test_exit_codes_are_distinct() -> None:
    """Every error class has its own exit code, none of them 0, 1 or 2."""
    codes = [code for code, _ in EXIT_CODES.values()]
    assert len(codes) == len(set(codes))
    assert not {0, 1, 2} & set(codes)
    assert WeightVaultError in EXIT_CODES


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_shell_completion_scripts_complete_commands_options_and_choices(shell: str) -> None:
    script = wv("completion", shell).stdout
    assert "_WEIGHTVAULT_COMPLETE" in script  # the script calls back into weightvault to complete
    if shell != "bash":
        return

    def complete(line: str) -> list[str]:
        words = line.split(" ")
        env = {"COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1), "_WEIGHTVAULT_COMPLETE": "bash_complete"}
        done = subprocess.run(
            [sys.executable, "-m", "weightvault"], env={**os.environ, **env}, capture_output=True, text=True,
            timeout=60, check=True,
        )  # fmt: skip
        return [line.split(",", 1)[1] for line in done.stdout.splitlines()]

    assert "broker" in complete("weightvault bro")
    assert "--suite" in complete("weightvault seal --su")
    assert {"aes-256-gcm", "chacha20-poly1305"} <= set(complete("weightvault seal a b --suite "))


def _on_a_terminal(*args: str | Path) -> str:
    """What a command writes to a pseudo-terminal (stdout and stderr both), as a user would see it."""
    import pty
    import select

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "weightvault", *map(str, args)], stdin=follower, stdout=follower, stderr=follower,
        env={**os.environ, "COLUMNS": "120", "TERM": "xterm"},
    )  # fmt: skip
    os.close(follower)
    out = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert 0 == proc.wait(60)
    return out.decode(errors="replace")


def test_progress_bars_show_on_a_terminal_and_quiet_turns_them_off(keys: dict[str, Path], tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    plain = tmp_path / "big.safetensors"
    save_file({f"t{i}": np.ones(4 << 20, dtype=np.float32) for i in range(4)}, str(plain))  # 64 MiB
    shown = _on_a_terminal("seal", plain, tmp_path / "a.wvlt", "-r", keys["kek"])
    assert "sealing" in shown
    assert "MB" in shown  # rich's transfer columns
    quiet = _on_a_terminal("-q", "seal", plain, tmp_path / "b.wvlt", "-r", keys["kek"])
    assert "sealing" not in quiet.replace("sealed", "")
    assert "sealed 4 tensors" in quiet
    piped = wv("seal", plain, tmp_path / "c.wvlt", "-r", keys["kek"])  # not a terminal: no bar either
    assert "sealing" not in piped.stderr


def test_reporting_commands_print_json_with_json(keys: dict[str, Path], tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    plain = tmp_path / "m.safetensors"
    save_file({"w": np.arange(64, dtype=np.float32)}, str(plain))
    made = json.loads(wv("keygen", "kek", tmp_path / "new.kek", "--json").stdout)
    assert {"kind", "kid", "private"} <= set(made)
    sealed = json.loads(wv("seal", plain, tmp_path / "m.wvlt", "-r", keys["kek"], "--json").stdout)
    assert (1, "aes-256-gcm", False) == (sealed["tensors"], sealed["suite"], sealed["signature_verified"])
    rewrapped = json.loads(
        wv("rewrap", tmp_path / "m.wvlt", "-i", keys["kek"], "--add", keys["hpke_pub"], "--json").stdout
    )
    assert 2 == len(rewrapped["files"][0]["recipients"])
    unsealed = json.loads(
        wv("unseal", tmp_path / "m.wvlt", tmp_path / "back.safetensors", "-i", keys["hpke"], "--json").stdout
    )
    assert str(tmp_path / "back.safetensors") == unsealed["unsealed"]
    resealed = json.loads(
        wv("reseal", tmp_path / "m.wvlt", tmp_path / "r.wvlt", "-i", keys["kek"], "-r", keys["kek"], "--json").stdout
    )
    assert resealed["file_id"] != sealed["file_id"]  # a new file key, a new file id
