"""Files a user hands the CLI are hostile input too: each command that reads one answers a bad one
with one line and a documented exit code, never a traceback (deep nesting once raised
RecursionError, binary text UnicodeDecodeError, a JSON list a TypeError, a 5000-digit number a
ValueError)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from weightvault.cli.exits import EXIT_CODES

pytestmark = pytest.mark.e2e

HOSTILE = {
    "deep": b"[" * 100_000,
    "binary": bytes(range(256)) * 16,
    "list": b"[1, 2, 3]",
    "digits": b'{"v": ' + b"9" * 5000 + b"}",
}
#: ``F`` is replaced by the hostile file; nothing listens at the broker URL (no command gets that far).
COMMANDS = [
    "report verify F --log-key F --allow-unwitnessed",
    "report verify F --log-key a+b+c --policy F",
    "audit verify F --log-key F",
    "custody submit-file F --key F --share F --out OUT --ceremony 00 --yes",
    "approval sign-file F --key F --out OUT --yes",
    "broker restore F --into OUT --root-key F --vkey F --unchecked",
    "admin policy put acme p F --token wv1_a.b --broker http://127.0.0.1:9",
    "approval policy put F --token wv1_a.b --broker http://127.0.0.1:9",
    "sentinel run --once --rules F --broker http://127.0.0.1:9 --token wv1_a.b --log-key F",
    "inspect F",
]
_CODES = {code for code, _ in EXIT_CODES.values()}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_hostile_file_gets_one_line_and_a_documented_exit_code(command: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    for name, data in HOSTILE.items():
        hostile = tmp_path / name
        hostile.write_bytes(data)
        args = [str(hostile) if a == "F" else str(tmp_path / "out") if a == "OUT" else a for a in command.split()]
        cmd = [sys.executable, "-m", "weightvault", *args]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, env=env)
        lines = proc.stderr.strip().splitlines()
        assert "Traceback" not in proc.stderr, (name, proc.stderr[-600:])
        assert proc.returncode in _CODES, (name, proc.returncode, proc.stderr)
        assert 1 <= len(lines) <= 2, (name, proc.stderr)
        assert lines[0].startswith("weightvault: "), (name, proc.stderr)
        assert not (tmp_path / "out").exists()
