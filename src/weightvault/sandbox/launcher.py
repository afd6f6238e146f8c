"""``weightvault sandbox -- CMD``: run a serving command whose only ways out are the broker and its published ports.

The launcher (root) builds the network namespace and its firewall (:mod:`.netns`,
:mod:`.policy`), runs the command under bubblewrap inside it as an unprivileged user,
relays the broker (and any ``--allow`` destination) in and the published ports out,
and reports to the broker's audit log: ``sandbox.start``, one ``egress.blocked`` per
blocked destination and second (packets counted by the firewall), and ``sandbox.exit``.

It refuses to start without the privileges or tools to isolate
(:class:`~weightvault.errors.IsolationError`); ``unsafe_no_isolation`` is the only way
to run the command without isolation, and it says so on every start.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from weightvault.crypto.secret import random_bytes
from weightvault.errors import ConfigError, IsolationError, WeightVaultError
from weightvault.sandbox.netns import Blocked, NetworkNamespace, namespace_name, remove_stale
from weightvault.sandbox.policy import (
    SANDBOX_SCRATCH,
    BwrapSpec,
    Destination,
    Published,
    broker_destination,
    bwrap_argv,
    nft_ruleset,
    unreadable,
)

__all__ = ["Sandbox", "SandboxOptions"]

_TOOLS: Final = {"bwrap": "bubblewrap", "nft": "nftables", "ip": "iproute2", "setpriv": "util-linux"}
_CHUNK: Final = 1 << 16

Reporter = Callable[[list[dict[str, Any]]], None]


@dataclass
class SandboxOptions:
    command: Sequence[str]
    broker_url: str
    model: Path | None = None
    publish: Sequence[Published] = ()
    allow: Sequence[Destination] = ()
    loopback_ports: Sequence[int] = ()
    ro_paths: Sequence[Path] = ()
    env: dict[str, str] = field(default_factory=dict)
    user: str = "nobody"
    gpu: bool = False
    unsafe_no_isolation: bool = False
    report_interval_s: float = 1.0


def preflight() -> None:
    """Refuse, with the reason, where this process cannot build the sandbox.

    Raises:
        IsolationError: not Linux, not root, or a tool missing.
    """
    if sys.platform != "linux":
        raise IsolationError("the sandbox needs Linux namespaces")
    if os.geteuid() != 0:
        raise IsolationError("cannot isolate: creating the network namespace and its firewall needs root")
    missing = [f"{tool} ({package})" for tool, package in _TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise IsolationError(f"cannot isolate: missing {', '.join(missing)}")


def python_paths() -> list[Path]:
    """What this Python needs to run weightvault inside the sandbox: its prefixes, import paths and the
    weightvault package. Never the working directory (``python -m`` puts it first on ``sys.path``): that
    is wherever the operator stood, a checkout with its keys, say."""
    import weightvault

    cwd = Path.cwd().resolve()
    found = {Path(sys.base_prefix), Path(sys.prefix), Path(weightvault.__file__).resolve().parents[1]}
    for entry in sys.path:
        if entry and Path(entry).is_absolute() and Path(entry).is_dir() and Path(entry).resolve() != cwd:
            found.add(Path(entry))
    return sorted(p for p in found if not str(p.resolve()).startswith(("/usr/", "/etc/")) and p != Path("/"))


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def _splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter], b: tuple[asyncio.StreamReader, asyncio.StreamWriter]
) -> None:
    try:
        await asyncio.gather(_pump(a[0], b[1]), _pump(b[0], a[1]))
    finally:
        for w in (a[1], b[1]):
            w.close()


class Sandbox:
    def __init__(self, options: SandboxOptions, report: Reporter | None = None) -> None:
        self.options = options
        self.report = report
        self.id = random_bytes(6).hex()
        self.relays = [broker_destination(options.broker_url), *options.allow]
        self.pending: list[dict[str, Any]] = []
        self.last: Blocked = {}
        self.total_blocked = 0

    # -- reporting --------------------------------------------------------------------------------

    def _send(self, events: list[dict[str, Any]]) -> None:
        self.pending += events
        if self.report is None:
            self.pending.clear()
            return
        while self.pending:
            batch = self.pending[:256]
            try:
                self.report(batch)
            except WeightVaultError as exc:
                print(f"weightvault sandbox: cannot report to the broker yet ({exc}); will retry", file=sys.stderr)
                return
            del self.pending[: len(batch)]

    def _collect(self, ns: NetworkNamespace) -> None:
        try:
            now = ns.blocked()
        except IsolationError as exc:
            print(f"weightvault sandbox: cannot read the firewall's counters: {exc}", file=sys.stderr)
            return
        events = []
        for key, packets in sorted(now.items()):
            delta = packets - self.last.get(key, 0)
            if delta <= 0:
                continue
            family, proto, dst, port = key
            self.total_blocked += delta
            where = f"[{dst}]:{port}" if family == "ipv6" else f"{dst}:{port}"
            print(f"weightvault sandbox: blocked {proto} to {where} ({delta} packets)", file=sys.stderr, flush=True)
            details = {"sandbox": self.id, "family": family, "proto": proto, "dst": dst, "port": port}
            events.append({"type": "egress.blocked", "details": {**details, "packets": delta, "total": packets}})
        self.last = now
        if events or self.pending:
            self._send(events)

    # -- running ----------------------------------------------------------------------------------

    def run(self) -> int:
        """Run the command to its end; returns its exit status (128+N if a signal ended it)."""
        o = self.options
        if not o.command:
            raise ConfigError("no command to run: weightvault sandbox [OPTIONS] -- CMD [ARGS]...")
        if o.unsafe_no_isolation:
            print(
                "weightvault sandbox: WARNING: --unsafe-no-isolation: the command runs WITHOUT any isolation; "
                "it can reach every network and file this user can",
                file=sys.stderr,
                flush=True,
            )
            return asyncio.run(self._main(None))
        preflight()
        try:
            user = pwd.getpwnam(o.user) if not o.user.isdigit() else pwd.getpwuid(int(o.user))
        except KeyError as exc:
            raise ConfigError(f"no user {o.user!r}") from exc
        if user.pw_uid == 0:
            raise IsolationError("the sandboxed command must not run as root: pick another --user")
        if o.model is not None:
            groups = [g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem] + [user.pw_gid]
            blocked = unreadable(o.model, user.pw_uid, groups)
            if blocked is not None:
                raise ConfigError(
                    f"{blocked} is not readable by {user.pw_name}, who runs the sandboxed command; sealed weights "
                    f"are encrypted, so 'chmod -R a+rX {o.model}' exposes nothing"
                )
        inner_ports = [p.port for p in o.publish] + list(o.loopback_ports)
        ruleset = nft_ruleset(self.relays, inner_ports)
        for name in remove_stale():
            print(f"weightvault sandbox: removed {name}, left by a launcher that was killed", file=sys.stderr)
        ns = NetworkNamespace.create(namespace_name(self.id), self.relays, inner_ports, ruleset)
        scratch = Path(tempfile.mkdtemp(prefix=f"weightvault-sandbox-{self.id}-"))
        try:
            os.chown(scratch, user.pw_uid, user.pw_gid)
            os.chmod(scratch, 0o700)
            devices = sorted(Path("/dev").glob("nvidia*")) + ([Path("/dev/dri")] if Path("/dev/dri").exists() else [])
            env = {
                "PATH": f"{sys.prefix}/bin:/usr/local/bin:/usr/bin:/bin",
                "HOME": SANDBOX_SCRATCH,
                "TMPDIR": "/tmp",  # noqa: S108 - the sandbox's own private tmpfs
                "LANG": "C.UTF-8",
                "PYTHONDONTWRITEBYTECODE": "1",
                "HF_HOME": f"{SANDBOX_SCRATCH}/hf",
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "WEIGHTVAULT_BROKER": o.broker_url,
                **o.env,
            }
            spec = BwrapSpec(
                ro_paths=[*python_paths(), *o.ro_paths],
                model=o.model,
                scratch=scratch,
                uid=user.pw_uid,
                gid=user.pw_gid,
                env=env,
                devices=devices if o.gpu else (),
            )
            # Absolute paths: the command's environment, which these run in, has its own PATH.
            bwrap = bwrap_argv(spec, o.command)
            argv = [_tool("ip"), "netns", "exec", ns.name, _tool("bwrap"), *bwrap[1:]]
            return asyncio.run(self._main(ns, argv, spec.env))
        finally:
            ns.delete()
            shutil.rmtree(scratch, ignore_errors=True)

    async def _main(
        self, ns: NetworkNamespace | None, argv: Sequence[str] | None = None, env: dict[str, str] | None = None
    ) -> int:
        o = self.options
        loop = asyncio.get_running_loop()
        servers: list[asyncio.AbstractServer] = []
        if ns is not None:
            for dest in self.relays:
                servers.append(await self._relay_out(ns, dest))
        for pub in o.publish:
            servers.append(await self._relay_in(ns, pub))
        command = str(Path(o.command[0]).name)[:64] or "command"
        self._send(
            [
                {
                    "type": "sandbox.start",
                    "details": {"sandbox": self.id, "command": _safe(command), "isolated": ns is not None},
                }
            ]
        )
        if argv is None:
            proc = await asyncio.create_subprocess_exec(*o.command, env={**os.environ, **o.env})
        else:
            # The environment (the token among it) is inherited through ip, bwrap and setpriv,
            # exactly this and nothing else of ours; the command line carries no secret.
            proc = await asyncio.create_subprocess_exec(*argv, env=env)
        print(f"weightvault sandbox {self.id}: started {command} (pid {proc.pid})", file=sys.stderr, flush=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, proc.terminate)
        waiter = asyncio.ensure_future(proc.wait())
        try:
            while not waiter.done():
                await asyncio.wait([waiter], timeout=o.report_interval_s)
                if ns is not None:
                    await asyncio.to_thread(self._collect, ns)
        finally:
            for server in servers:
                server.close()
            if not waiter.done():
                proc.kill()
                await waiter
            if ns is not None:
                await asyncio.to_thread(self._collect, ns)
            for pub in o.publish:
                with contextlib.suppress(OSError):
                    pub.socket.unlink()
        status = waiter.result()
        code = 128 - status if status < 0 else status
        self._send(
            [{"type": "sandbox.exit", "details": {"sandbox": self.id, "status": code, "blocked": self.total_blocked}}]
        )
        return code

    async def _relay_out(self, ns: NetworkNamespace, dest: Destination) -> asyncio.AbstractServer:
        """A listener inside the namespace at ``dest``'s address; each connection goes to ``dest`` only."""
        loop = asyncio.get_running_loop()

        def listen() -> socket.socket:
            family = socket.AF_INET6 if dest.family == 6 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((dest.host, dest.port))
            sock.listen(128)
            sock.setblocking(False)
            return sock

        sock = await loop.run_in_executor(ns.executor(), listen)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                outside = await asyncio.open_connection(dest.host, dest.port)
            except OSError:
                writer.close()
                return
            await _splice((reader, writer), outside)

        return await asyncio.start_server(handle, sock=sock)

    async def _relay_in(self, ns: NetworkNamespace | None, pub: Published) -> asyncio.AbstractServer:
        """A Unix socket outside (mode 0600); each connection goes to 127.0.0.1:PORT inside."""
        loop = asyncio.get_running_loop()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                if ns is None:
                    inside = await asyncio.open_connection("127.0.0.1", pub.port)
                else:
                    sock = await loop.run_in_executor(ns.executor(), _new_socket)
                    await loop.sock_connect(sock, ("127.0.0.1", pub.port))
                    inside = await asyncio.open_connection(sock=sock)
            except OSError:
                writer.close()
                return
            await _splice((reader, writer), inside)

        with contextlib.suppress(FileNotFoundError):
            pub.socket.unlink()
        old = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(handle, path=str(pub.socket))
        finally:
            os.umask(old)
        return server


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise IsolationError(f"cannot isolate: {name} ({_TOOLS[name]}) is missing")
    return found


def _new_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def _safe(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    return cleaned if cleaned[:1].isalnum() else "cmd" + cleaned
