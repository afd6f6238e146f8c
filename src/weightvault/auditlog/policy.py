"""C2SP tlog-policy: which witnesses exist and which combinations of them form a quorum.

Text format (line based; ``#`` comments and blank lines ignored)::

    log <vkey> [<url>]
    witness <name> <vkey> [<url>]
    group <name> all|any|<k> <member> ...
    quorum <name>|none

Groups may only name witnesses or groups defined on earlier lines, each member at
most once, so evaluation always terminates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from weightvault.auditlog.note import TYPE_COSIGNATURE, TYPE_ED25519, NoteVerifier
from weightvault.errors import CheckpointError

__all__ = ["WitnessPolicy"]

_MAX_ENTRIES = 128


@dataclass(frozen=True, slots=True)
class WitnessPolicy:
    """Witness keys, groups and the quorum rule."""

    witnesses: Mapping[str, NoteVerifier]
    groups: Mapping[str, tuple[int, tuple[str, ...]]] = field(default_factory=dict)
    quorum: str = "none"
    logs: tuple[NoteVerifier, ...] = ()

    def __post_init__(self) -> None:
        if self.quorum != "none" and self.quorum not in self.witnesses and self.quorum not in self.groups:
            raise CheckpointError(f"quorum names an undefined witness or group {self.quorum!r}")

    @classmethod
    def threshold(cls, witnesses: Sequence[NoteVerifier], k: int) -> WitnessPolicy:
        """Any ``k`` of ``witnesses`` (``k`` = 0 means no witnesses are needed)."""
        if k == 0:
            return cls({w.name: w for w in witnesses}, {}, "none")
        if not 1 <= k <= len(witnesses):
            raise CheckpointError("quorum threshold must be between 1 and the number of witnesses")
        named = {w.name: w for w in witnesses}
        return cls(named, {"quorum": (k, tuple(named))}, "quorum")

    def satisfied(self, cosigned: set[str]) -> bool:
        """Whether the witnesses in ``cosigned`` meet the quorum."""
        if self.quorum == "none":
            return True
        return self._holds(self.quorum, cosigned)

    def _holds(self, name: str, cosigned: set[str]) -> bool:
        if name in self.witnesses:
            return name in cosigned
        k, members = self.groups[name]
        return sum(1 for m in members if self._holds(m, cosigned)) >= k

    @classmethod
    def parse(cls, text: str) -> WitnessPolicy:
        """Parse a tlog-policy file.

        Raises:
            CheckpointError: syntax errors, undefined or duplicate names, keys of the wrong type.
        """
        witnesses: dict[str, NoteVerifier] = {}
        groups: dict[str, tuple[int, tuple[str, ...]]] = {}
        logs: list[NoteVerifier] = []
        quorum: str | None = None
        seen_keys: set[bytes] = set()
        for number, raw in enumerate(text.split("\n"), 1):
            line = raw.strip(" \t")
            if not line or line.startswith("#"):
                continue
            if any(ord(c) < 0x20 and c != "\t" for c in line):
                raise CheckpointError(f"policy line {number}: control character")
            words = line.replace("\t", " ").split()
            keyword, args = words[0], words[1:]
            if len(witnesses) + len(groups) + len(logs) > _MAX_ENTRIES:
                raise CheckpointError("policy is too large")
            if keyword == "log" and 1 <= len(args) <= 2:
                log = NoteVerifier.from_vkey(args[0])
                if log.sig_type != TYPE_ED25519 or log.public in seen_keys:
                    raise CheckpointError(f"policy line {number}: bad or duplicate log key")
                seen_keys.add(log.public)
                logs.append(log)
            elif keyword == "witness" and 2 <= len(args) <= 3:
                name, key = args[0], NoteVerifier.from_vkey(args[1])
                if key.sig_type != TYPE_COSIGNATURE or key.public in seen_keys:
                    raise CheckpointError(f"policy line {number}: bad or duplicate witness key")
                if name in witnesses or name in groups or name == "none":
                    raise CheckpointError(f"policy line {number}: name {name!r} already defined")
                seen_keys.add(key.public)
                witnesses[name] = key
            elif keyword == "group" and len(args) >= 3:
                name, rule, members = args[0], args[1], tuple(args[2:])
                if name in witnesses or name in groups or name == "none":
                    raise CheckpointError(f"policy line {number}: name {name!r} already defined")
                if len(set(members)) != len(members) or any(m not in witnesses and m not in groups for m in members):
                    raise CheckpointError(f"policy line {number}: undefined or repeated group member")
                k = {"all": len(members), "any": 1}.get(rule)
                if k is None:
                    if not rule.isdigit() or not 1 <= int(rule) <= len(members):
                        raise CheckpointError(f"policy line {number}: threshold must be all, any or 1..n")
                    k = int(rule)
                groups[name] = (k, members)
            elif keyword == "quorum" and len(args) == 1:
                if quorum is not None:
                    raise CheckpointError("policy has more than one quorum line")
                quorum = args[0]
                if quorum != "none" and quorum not in witnesses and quorum not in groups:
                    raise CheckpointError(f"policy line {number}: quorum names an undefined witness or group")
            else:
                raise CheckpointError(f"policy line {number}: unrecognised line")
        if quorum is None:
            raise CheckpointError("policy has no quorum line")
        return cls(witnesses, groups, quorum, tuple(logs))

    def to_text(self) -> str:
        lines = [f"log {log.vkey()}" for log in self.logs]
        lines += [f"witness {name} {key.vkey()}" for name, key in self.witnesses.items()]
        for name, (k, members) in self.groups.items():
            lines.append(f"group {name} {k} {' '.join(members)}")
        lines.append(f"quorum {self.quorum}")
        return "\n".join(lines) + "\n"
