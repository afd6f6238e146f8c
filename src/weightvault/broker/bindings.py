"""HPKE ``info`` strings that bind each sealed payload of the protocol to its context.

Shared by the broker (which seals and opens) and the client (which opens and seals),
so both sides derive byte-identical strings. Each is a fixed label, a NUL, and the
canonical JSON (RFC 8785) of the context: a payload sealed for one tenant, model,
version or token does not open for another.
"""

from __future__ import annotations

import rfc8785

__all__ = ["export_info", "registration_info", "release_info"]


def registration_info(tenant: str, name: str, version: str) -> bytes:
    """HPKE info binding a publisher's sealed file key to the model it registers."""
    return b"weightvault/v1 register\x00" + rfc8785.dumps({"tenant": tenant, "name": name, "version": version})


def export_info(tenant: str, resource: str) -> bytes:
    """HPKE info binding an exported file key to its tenant and model."""
    return b"weightvault/v1 export\x00" + rfc8785.dumps({"tenant": tenant, "resource": resource})


def release_info(tenant: str, resource: str, jti: str) -> bytes:
    """HPKE info binding a released payload to its tenant, model and token."""
    return b"weightvault/v1 release\x00" + rfc8785.dumps({"tenant": tenant, "resource": resource, "jti": jti})
