"""Asking people for secrets: from the environment when set, else from the terminal, never echoed."""

from __future__ import annotations

import getpass
import os
import sys
from typing import Final

from weightvault.errors import ConfigError

__all__ = ["PASSPHRASE_ENV", "ask_passphrase"]

PASSPHRASE_ENV: Final = "WEIGHTVAULT_PASSPHRASE"  # noqa: S105 - the name of a variable, not a secret


def ask_passphrase(confirm: bool, label: str = "passphrase") -> str:
    """``$WEIGHTVAULT_PASSPHRASE``, or a prompt (asked twice with ``confirm``).

    Raises:
        ConfigError: no variable and no terminal, or the two entries differ.
    """
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value
    if not sys.stdin.isatty():
        raise ConfigError(f"no terminal to ask for the {label}; set {PASSPHRASE_ENV}")
    first = getpass.getpass(f"{label}: ")
    if confirm and getpass.getpass(f"{label} (again): ") != first:
        raise ConfigError("passphrases do not match")
    return first
