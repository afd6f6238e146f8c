"""Names of broker objects (tenants, principals, devices, models, policies): a small safe alphabet."""

from __future__ import annotations

from typing import Final

from weightvault.errors import InvalidRequestError

__all__ = ["check_name"]

_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


def check_name(value: str, what: str, max_len: int = 64) -> str:
    """``value`` if it is 1-``max_len`` characters of a-z, 0-9, '-', '_', '.' not starting with a symbol.

    Names appear in resource paths, audit events and URLs, so no separator, no
    upper case (no look-alike names) and no leading dot.

    Raises:
        InvalidRequestError: anything else.
    """
    if not value or len(value) > max_len or not set(value) <= _NAME_CHARS or value[0] in "-_.":
        raise InvalidRequestError(f"{what} must be 1-{max_len} characters of a-z, 0-9, '-', '_' or '.'")
    return value
