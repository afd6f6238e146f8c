"""The sandbox's network namespace: created with iproute2, firewalled with nftables, entered per socket.

Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN in the initial namespaces). Every command's
failure becomes an :class:`~weightvault.errors.IsolationError` that quotes the tool.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

from weightvault.errors import IsolationError
from weightvault.sandbox.policy import INNER_V4, INNER_V6, NFT_TABLE, Destination

__all__ = ["Blocked", "NetworkNamespace", "namespace_name", "remove_stale"]

_CLONE_NEWNET: Final = 0x40000000
#: (family, protocol, destination, port) -> packets
Blocked = dict[tuple[str, str, str, int], int]


def _run(argv: Sequence[str], stdin: str | None = None) -> str:
    try:
        done = subprocess.run(  # noqa: S603 - fixed tools (ip, nft) with arguments we built
            list(argv), input=stdin, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise IsolationError(f"{argv[0]} failed: {exc}") from exc
    if done.returncode != 0:
        raise IsolationError(f"'{' '.join(argv[:4])}' failed: {done.stderr.strip()[:300]}")
    return done.stdout


_NAME_RE: Final = re.compile(r"wv-(\d+)-[0-9a-f]+")


def namespace_name(sandbox_id: str) -> str:
    """``wv-<launcher pid>-<id>``: the pid tells a later launcher whether this one still runs."""
    return f"wv-{os.getpid()}-{sandbox_id}"


def remove_stale() -> list[str]:
    """Delete the namespaces of launchers that died without cleaning up (SIGKILL); returns their names."""
    removed = []
    for entry in sorted(Path("/run/netns").glob("wv-*")) if Path("/run/netns").is_dir() else []:
        m = _NAME_RE.fullmatch(entry.name)
        if m is None:
            continue
        try:
            os.kill(int(m[1]), 0)
        except ProcessLookupError:
            NetworkNamespace(entry.name).delete()
            removed.append(entry.name)
        except PermissionError:
            continue  # alive, another user's
    return removed


class NetworkNamespace:
    """A named network namespace (``ip netns``) with only ``lo`` and the sandbox's ruleset."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = Path("/run/netns") / name
        self._executor: ThreadPoolExecutor | None = None

    @classmethod
    def create(
        cls, name: str, relays: Sequence[Destination], inner_ports: Sequence[int], ruleset: str
    ) -> NetworkNamespace:
        ns = cls(name)
        _run(["ip", "netns", "add", name])
        try:
            ip = ["ip", "-n", name]
            _run([*ip, "link", "set", "lo", "up"])
            _run([*ip, "addr", "add", f"{INNER_V4}/32", "dev", "lo"])
            _run([*ip, "-6", "addr", "add", f"{INNER_V6}/128", "dev", "lo", "nodad"])
            # Default routes into lo: every packet then meets the firewall, which counts and rejects it.
            _run([*ip, "route", "add", "default", "dev", "lo", "src", INNER_V4])
            _run([*ip, "-6", "route", "add", "default", "dev", "lo", "src", INNER_V6])
            for d in relays:
                if d.host not in ("127.0.0.1", "::1"):
                    _run([*ip, "addr", "add", f"{d.host}/{128 if d.family == 6 else 32}", "dev", "lo"])
            _run(["ip", "netns", "exec", name, "nft", "-f", "-"], stdin=ruleset)
        except BaseException:
            ns.delete()
            raise
        return ns

    def executor(self) -> ThreadPoolExecutor:
        """One thread that lives in this namespace: sockets it creates belong here (setns is per thread)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, initializer=self._enter, thread_name_prefix="netns")
        return self._executor

    def _enter(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns failed")
        finally:
            os.close(fd)

    def blocked(self) -> Blocked:
        """Packets the firewall rejected so far, by destination (cumulative)."""
        out: Blocked = {}
        for family, set_name in (("ipv4", "blocked4"), ("ipv6", "blocked6")):
            text = _run(["ip", "netns", "exec", self.name, "nft", "-j", "list", "set", "inet", NFT_TABLE, set_name])
            for item in json.loads(text).get("nftables", []):  # noqa: TID251 - nft's own output
                for elem in item.get("set", {}).get("elem", []):
                    entry = elem.get("elem", {})
                    dst, proto, port = entry.get("val", {}).get("concat", ["", "other", 0])
                    proto = (
                        proto if isinstance(proto, str) and proto in ("tcp", "udp", "icmp", "ipv6-icmp") else "other"
                    )
                    port = port if isinstance(port, int) else 0
                    out[(family, proto, str(dst), port)] = int(entry.get("counter", {}).get("packets", 0))
        return out

    def delete(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        subprocess.run(  # noqa: S603
            ["ip", "netns", "del", self.name],  # noqa: S607 - iproute2 from PATH, as every other call here
            capture_output=True,
            check=False,
            timeout=30,
        )
