"""What a sandbox allows, as data: egress destinations, the firewall ruleset and the bubblewrap command line.

Pure: builds text and argument lists, runs nothing (:mod:`.launcher` does).

The design is deny by construction, then deny by rule:

- the sandbox's network namespace has one interface, ``lo``. Its default routes
  point into ``lo`` too, so that every packet to anywhere passes the firewall's output
  hook, where it is counted and rejected, instead of failing silently for lack of a
  route. Nothing in the namespace leads out;
- the only destinations are relays owned by the launcher: a listening socket inside the
  namespace per allowed destination (the broker; any ``--allow`` destination), each
  connected by the launcher to exactly one address outside. Published ports go the
  other way: the launcher connects into the namespace on behalf of the gateway;
- the firewall (nftables, ``inet weightvault`` table) accepts only packets to those relays and
  published ports, and replies of accepted connections. Every other packet is added to
  a counting set keyed by destination, protocol and port, and rejected (TCP with a
  reset, others with ICMP), so that the process fails fast and the launcher can report
  each blocked destination (``egress.blocked``).

Wildcard egress is refused: an allowed destination is one IP address and one port.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from weightvault.errors import ConfigError, EgressPolicyError

__all__ = [
    "SANDBOX_SCRATCH",
    "BwrapSpec",
    "Destination",
    "Published",
    "bwrap_argv",
    "nft_ruleset",
    "parse_allow",
    "parse_publish",
]

SANDBOX_SCRATCH: Final = "/scratch"
#: What of the host's /etc the sandbox sees (each only if it exists); ``--ro-bind`` adds more.
ETC_ENTRIES: Final = (
    "passwd", "group", "nsswitch.conf", "hosts", "host.conf", "gai.conf", "resolv.conf", "protocols",
    "services", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "ssl",
    "ca-certificates", "ca-certificates.conf", "alternatives", "mime.types", "magic", "magic.mime",
    "os-release", "debian_version", "tpm2-tss", "glvnd", "OpenCL", "vulkan", "nvidia",
)  # fmt: skip
NFT_TABLE: Final = "weightvault"
#: The sandbox's own addresses, on lo: the source of packets sent towards the default route.
INNER_V4: Final = "10.255.255.1"
INNER_V6: Final = "fd00:7776:6c74::1"


@dataclass(frozen=True, slots=True)
class Destination:
    """One allowed destination outside: an IP address and a TCP port."""

    host: str
    port: int

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.host).version

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family == 6 else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Published:
    """A port inside the sandbox, reachable from outside through a Unix socket at ``socket``."""

    socket: Path
    port: int


def _port(text: str, what: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise EgressPolicyError(f"{what}: the port must be one number from 1 to 65535, not {text!r}")
    return int(text)


def parse_allow(text: str) -> Destination:
    """``IP:PORT`` or ``[IPv6]:PORT``: exactly one host and one port.

    Raises:
        EgressPolicyError: a wildcard (``*``, ``0.0.0.0``, ``::``, a network, a port range or 0),
            a host name, or anything malformed.
    """
    value = text.strip()
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise EgressPolicyError(f"egress rule {text!r}: expected IP:PORT")
    if "*" in value or "/" in host or "-" in port or "," in port:
        raise EgressPolicyError(f"egress rule {text!r} is a wildcard; allow one address and one port")
    try:
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise EgressPolicyError(
            f"egress rule {text!r}: {host!r} is not an IP address (names are not resolved)"
        ) from exc
    if address.is_unspecified or address.is_multicast or (address.version == 4 and str(address).endswith(".255")):
        raise EgressPolicyError(f"egress rule {text!r} is a wildcard; allow one address and one port")
    return Destination(str(address), _port(port, f"egress rule {text!r}"))


def broker_destination(url: str) -> Destination:
    """The broker's address from its URL (an IP literal or ``localhost``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host == "localhost":
        host = "127.0.0.1"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ConfigError(f"broker URL {url!r}: {exc}") from exc
    try:
        return parse_allow(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    except EgressPolicyError as exc:
        raise ConfigError(f"broker URL {url!r}: the sandbox needs the broker as an IP address ({exc})") from exc


def parse_publish(text: str) -> Published:
    """``SOCKET_PATH=PORT``: the gateway reaches the sandbox's port PORT through the Unix socket."""
    path, sep, port = text.rpartition("=")
    if not sep or not path:
        raise ConfigError(f"--publish {text!r}: expected SOCKET_PATH=PORT")
    return Published(Path(path).absolute(), _port(port, f"--publish {text!r}"))


def nft_ruleset(relays: Iterable[Destination], inner_ports: Iterable[int]) -> str:
    """The sandbox namespace's whole ruleset (loaded with ``nft -f``, replacing nothing else)."""
    lines = [
        f"table inet {NFT_TABLE} {{",
        "  set blocked4 { type ipv4_addr . inet_proto . inet_service; flags dynamic; counter; size 65535; }",
        "  set blocked6 { type ipv6_addr . inet_proto . inet_service; flags dynamic; counter; size 65535; }",
        "  chain output {",
        "    type filter hook output priority 0; policy drop;",
        "    ct state established,related accept",
    ]
    for d in relays:
        proto = "ip6" if d.family == 6 else "ip"
        lines.append(f'    oif "lo" {proto} daddr {d.host} tcp dport {d.port} accept')
    for port in sorted(set(inner_ports)):
        lines.append(f'    oif "lo" ip daddr 127.0.0.1 tcp dport {port} accept')
    for family, proto, addr in (("ipv4", "ip", "blocked4"), ("ipv6", "ip6", "blocked6")):
        tag = f"meta nfproto {family}"
        count = f"add @{addr} {{ {proto} daddr . meta l4proto . th dport }}"
        lines += [
            f"    {tag} meta l4proto tcp {count} reject with tcp reset",
            f"    {tag} meta l4proto udp {count} reject",
            f"    {tag} add @{addr} {{ {proto} daddr . meta l4proto . 0 }} reject",
        ]
    lines += ["    counter drop", "  }", "}", ""]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class BwrapSpec:
    """The mount view, identity and environment of the sandboxed process.

    ``env`` is the command's whole environment. It is handed to bubblewrap as its own
    environment, never on its command line, where every user of the host could read it
    (it holds the workload's API token).
    """

    ro_paths: Sequence[Path]
    model: Path | None
    scratch: Path
    uid: int
    gid: int
    env: dict[str, str]
    devices: Sequence[Path] = ()


def unreadable(root: Path, uid: int, gids: Sequence[int]) -> Path | None:
    """The first path under ``root`` that ``uid`` (with groups ``gids``) could not read, if any.

    Directories need read and search permission, files read permission. A sandboxed
    command runs as that user, so a model it cannot read would fail later and less clearly.
    """
    for path in [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]:
        st = path.stat()
        need = 0o5 if path.is_dir() else 0o4
        if st.st_uid == uid:
            bits = (st.st_mode >> 6) & 0o7
        elif st.st_gid in gids:
            bits = (st.st_mode >> 3) & 0o7
        else:
            bits = st.st_mode & 0o7
        if bits & need != need:
            return path
    return None


def _ancestors(path: Path) -> list[Path]:
    return [p for p in reversed(path.parents) if p != Path("/")]


def bwrap_argv(spec: BwrapSpec, command: Sequence[str]) -> list[str]:
    """``bwrap ... -- setpriv ... -- command``: a private mount view, new PID/IPC/UTS namespaces, no
    capabilities, no new privileges, and the command as an unprivileged user.

    The network namespace is the caller's (the launcher runs this inside the sandbox's).
    bwrap keeps CAP_SETUID/CAP_SETGID only for setpriv, which switches to ``uid``/``gid``,
    clears the supplementary groups and empties the inheritable and bounding sets before
    it runs the command (and bwrap has set no_new_privs, so nothing regains privilege).
    """
    argv = [
        "bwrap",
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "weightvault-sandbox",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "CAP_SETUID",
        "--cap-add",
        "CAP_SETGID",
    ]
    # System paths, read-only; Debian's merged /usr makes /bin, /lib... symlinks.
    argv += ["--ro-bind", "/usr", "/usr", "--perms", "0755", "--dir", "/etc"]
    # Of the host's /etc, only what programs need to run: users and groups, the dynamic
    # linker, name service switches, CA certificates, time zone. Not the rest, where
    # operators keep credentials and service configurations.
    for name in ETC_ENTRIES:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        top = Path("/") / name
        if top.is_symlink():
            argv += ["--symlink", os.readlink(top), str(top)]
        elif top.is_dir():
            argv += ["--ro-bind", str(top), str(top)]
    # A private /tmp first: binds below it (a model under /tmp) must land on top of it, not under it.
    argv += ["--perms", "1777", "--tmpfs", "/tmp"]  # noqa: S108 - the sandbox's own tmpfs
    made: set[Path] = {Path("/usr"), Path("/etc"), Path("/tmp")}  # noqa: S108
    bound: list[Path] = [Path("/usr")]
    wanted = {p.resolve() for p in spec.ro_paths if p.exists()} | ({spec.model.resolve()} if spec.model else set())
    for path in sorted(wanted):
        if any(path == b or b in path.parents for b in bound):
            continue  # inside a path that is bound already
        for ancestor in _ancestors(path):
            if ancestor not in made:
                # bwrap would create missing parents with mode 0700, which the unprivileged user cannot enter.
                argv += ["--perms", "0755", "--dir", str(ancestor)]
                made.add(ancestor)
        argv += ["--ro-bind", str(path), str(path)]
        made.add(path)
        bound.append(path)
    for device in spec.devices:
        argv += ["--dev-bind", str(device), str(device)]
    argv += [
        "--proc", "/proc",
        "--dev", "/dev",
        "--ro-bind-try", "/sys", "/sys",
        "--bind", str(spec.scratch), SANDBOX_SCRATCH,
        "--",
        "setpriv",
        f"--reuid={spec.uid}",
        f"--regid={spec.gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
        *command,
    ]  # fmt: skip
    return argv
