"""A container for key material that never prints itself.

Python cannot guarantee that secret bytes are erased from memory: immutable
``bytes`` objects may be copied by the interpreter or by pyca/cryptography.
:class:`SecretBytes` keeps its own copy in a ``bytearray`` so that at least that
copy can be overwritten with :meth:`SecretBytes.wipe` once a load finishes, and
its ``repr`` never reveals the value, so it cannot leak into logs, tracebacks or
audit records.
"""

from __future__ import annotations

import hmac
import os
from typing import Final

__all__ = ["SecretBytes", "random_bytes"]

_REDACTED: Final = "<redacted>"


def random_bytes(n: int) -> bytes:
    """Return ``n`` bytes from the operating system's CSPRNG."""
    if n <= 0:
        raise ValueError("n must be positive")
    return os.urandom(n)


class SecretBytes:
    """Secret key material with a redacted ``repr`` and a best-effort ``wipe``.

    Equality is constant time. The value is read with :meth:`reveal`, whose
    name makes every use easy to audit.
    """

    __slots__ = ("_buf", "_wiped")

    def __init__(self, value: bytes | bytearray | memoryview) -> None:
        self._buf = bytearray(value)
        self._wiped = False

    def __len__(self) -> int:
        return len(self._buf)

    def __repr__(self) -> str:
        return f"SecretBytes({_REDACTED}, {len(self._buf)} bytes)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretBytes):
            return NotImplemented
        return hmac.compare_digest(self._buf, other._buf)

    def __hash__(self) -> int:
        raise TypeError("SecretBytes is unhashable")

    def __reduce__(self) -> str | tuple[object, ...]:
        # Refuse pickling so that secrets never travel to another process by accident.
        raise TypeError("SecretBytes cannot be pickled")

    def reveal(self) -> bytes:
        """Return the secret value. Raises ``ValueError`` after :meth:`wipe`."""
        if self._wiped:
            raise ValueError("secret was wiped")
        return bytes(self._buf)

    def wipe(self) -> None:
        """Overwrite this object's copy of the secret with zeros."""
        for i in range(len(self._buf)):
            self._buf[i] = 0
        self._wiped = True

    @property
    def wiped(self) -> bool:
        """Whether :meth:`wipe` was called."""
        return self._wiped
