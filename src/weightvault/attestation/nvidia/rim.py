"""NVIDIA reference integrity manifests (RIMs): the golden measurements of a driver or a VBIOS.

A RIM is a TCG SWID tag (ISO/IEC 19770-2) that NVIDIA signs; its ``Payload`` lists one
``Resource`` per measurement index (``index``, ``active``, ``alternatives`` and the
SHA-384 values ``Hash0``…``Hash{alternatives-1}``), and its ``Meta`` names the version
(``colloquialVersion``) and the chip (``product``). Only *active* indices are compared:
the driver RIM and the VBIOS RIM of one GPU each activate their own indices, and a
measurement must equal one of its index's alternatives.

:func:`read_rim` reads these fields from the element that
:func:`weightvault.crypto.nvidia.verify_rim` returned, which is exactly what the signature
covers: nothing outside the signed element is ever read.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from weightvault.crypto.nvidia import VerifiedRim
from weightvault.errors import ConfigError

__all__ = ["Rim", "read_rim"]

_SWID: Final = "{http://standards.iso.org/iso/19770/-2/2015/schema.xsd}"
_HASH_ATTR: Final = re.compile(r"(?:\{[^}]*\})?Hash(\d+)$")
_MAX_INDEX: Final = 255
_MEASUREMENT_BYTES: Final = 48


@dataclass(frozen=True, slots=True)
class Rim:
    """The golden values of one verified RIM.

    ``golden`` maps each active index to the values it may take; ``kind`` is ``driver`` or
    ``vbios`` as configured; ``version`` is as the report names it (``545.00``,
    ``96.00.5E.00.01``, upper case).
    """

    kind: str
    version: str
    product: str
    golden: Mapping[int, frozenset[bytes]]
    not_before: datetime.datetime
    not_after: datetime.datetime
    source: str
    signer: str

    def valid_at(self, moment: datetime.datetime) -> bool:
        return self.not_before <= moment <= self.not_after


def read_rim(verified: VerifiedRim, kind: str, source: str) -> Rim:
    """The version, chip and active golden measurements of a verified RIM.

    Raises:
        ConfigError: no ``Meta`` version, an index out of range or repeated, an
            ``alternatives`` count that does not match its hashes, or a hash that is not
            48 bytes of hex.
    """
    root: Any = verified.signed
    meta = root.find(f"{_SWID}Meta")
    version = meta.get("colloquialVersion") if meta is not None else None
    if not isinstance(version, str) or not version:
        raise ConfigError(f"{source}: the RIM names no version (Meta colloquialVersion)")
    product = str(meta.get("product") or root.get("name") or "")
    golden: dict[int, frozenset[bytes]] = {}
    seen: set[int] = set()
    for resource in root.iter(f"{_SWID}Resource"):
        if resource.get("type") != "Measurement":
            continue
        try:
            index = int(resource.get("index", ""))
            alternatives = int(resource.get("alternatives", ""))
        except ValueError as exc:
            raise ConfigError(f"{source}: a measurement without a numeric index or alternatives") from exc
        if not 0 <= index <= _MAX_INDEX or index in seen:
            raise ConfigError(f"{source}: measurement index {index} is out of range or repeated")
        seen.add(index)
        if resource.get("active") != "True":
            continue
        hashes: dict[int, str] = {}
        for name, value in resource.attrib.items():
            match = _HASH_ATTR.match(name)
            if match:
                hashes[int(match.group(1))] = value
        if alternatives < 1 or sorted(hashes) != list(range(alternatives)):
            raise ConfigError(f"{source}: measurement {index} does not list its {alternatives} alternatives")
        try:
            values = frozenset(bytes.fromhex(v) for v in hashes.values())
        except ValueError as exc:
            raise ConfigError(f"{source}: measurement {index} is not hex") from exc
        if any(len(v) != _MEASUREMENT_BYTES for v in values):
            raise ConfigError(f"{source}: measurement {index} is not a SHA-384 value")
        golden[index] = values
    if not golden:
        raise ConfigError(f"{source}: the RIM has no active measurement")
    return Rim(
        kind=kind,
        version=version.upper(),
        product=product,
        golden=golden,
        not_before=verified.not_before,
        not_after=verified.not_after,
        source=source,
        signer=verified.signer,
    )
