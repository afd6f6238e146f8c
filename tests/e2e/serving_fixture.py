"""A serving stack of real processes: a broker, sandboxed ``weightvault serve`` processes, and a gateway.

MiniLM (embeddings) and a tiny causal LM (completions, chat) are sealed for tenant
``acme`` and published to the broker; each is served by ``weightvault serve`` inside
``weightvault sandbox`` (network namespace, nftables, bubblewrap, an unprivileged user),
published on a Unix socket; ``weightvault gateway`` routes to them with small budgets.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.broker_fixture import Broker, running_broker
from tests.e2e.servers import free_port, serve
from tests.serving_models import build_tiny_lm, readable_by_all
from weightvault.broker.storage import BrokerStore
from weightvault.client.broker import BrokerRecipient, registration_files
from weightvault.errors import IsolationError
from weightvault.format.keys import FileKey
from weightvault.gateway.state import KeyAdmin
from weightvault.sealing import seal_model_dir
from weightvault.server.broker_main import read_config

MINILM = "acme/models/minilm@1"
TINY = "acme/models/tiny@1"
GLOBEX_TINY = "globex/models/tiny@1"
#: The module gateway's budgets: small per key and principal, so tests reach them quickly.
KEY_BYTES = 6000
PRINCIPAL_BYTES = 9000
GATEWAY_BUDGETS = (
    f"key.hour.bytes={KEY_BYTES}",
    f"principal.hour.bytes={PRINCIPAL_BYTES}",
    "tenant.hour.bytes=1000000000",
)


def require_isolation() -> None:
    """Skip where the sandbox cannot isolate (not root, tools missing); under CI that is a failure."""
    from weightvault.sandbox.launcher import preflight

    try:
        preflight()
    except IsolationError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the sandbox tests: {exc}")
        pytest.skip(f"sandbox unavailable here: {exc}")


def publish(broker: Broker, tenant: str, name: str, plain: Path, out: Path) -> Path:
    resource = f"{tenant}/models/{name}@1"
    fk = FileKey.generate()
    result = seal_model_dir(plain, out, file_key=fk, recipients=[BrokerRecipient(broker.url, resource)])
    files = registration_files(result.manifest)
    broker.client(f"{tenant}-pub").register_model(tenant, name, "1", policy="open", file_key=fk, files=files)
    fk.wipe()
    readable_by_all(out)  # the sandboxed server runs as nobody
    return out


def sandboxed_server(broker: Broker, token: str, model: Path, socket: Path, *extra: str) -> object:
    """``weightvault sandbox -- weightvault serve MODEL`` published at ``socket``; ready at /health."""
    port = 8000
    return serve(
        [
            "sandbox",
            "--broker", broker.url,
            "--model", str(model),
            "--publish", f"{socket}={port}",
            "--report-interval", "0.2",
            "--",
            sys.executable, "-m", "weightvault", "serve", str(model), "--port", str(port), *extra,
        ],
        None,
        uds=socket,
        ready_path="/health",
        timeout_s=120,
        env={"WEIGHTVAULT_TOKEN": token},  # never on a command line
    )  # fmt: skip


def gateway_process(broker: Broker, sockets: dict[str, Path], *budgets: str, port: int | None = None) -> object:
    port = port or free_port()
    routes = [a for model, sock in sockets.items() for a in ("--route", f"{model}=unix:{sock}")]
    return serve(
        [
            "gateway", "serve",
            "--config", str(broker.base / "broker.toml"),
            *routes,
            "--model-bytes", f"{GLOBEX_TINY}=1000000",
            "--model-fraction", "1000",
            "--port", str(port),
            *[a for b in budgets for a in ("--budget", b)],
        ],
        port,
        ready_path="/health",
        timeout_s=60,
    )  # fmt: skip


@dataclass
class Stack:
    broker: Broker
    sockets: dict[str, Path]
    gateway: str
    tmp: Path
    keys: KeyAdmin
    counter: list[int] = field(default_factory=lambda: [0])
    #: The module's exit stack: what a test starts for the tests after it (a restarted gateway).
    exits: ExitStack | None = None

    def principal(self, tenant: str = "acme") -> str:
        """A fresh workload principal (each test's budgets are its own)."""
        self.counter[0] += 1
        name = f"{tenant}-svc{self.counter[0]}"
        self.broker.client("operator").create_principal(name, "workload", tenant)
        return name

    def key(self, principal: str | None = None, tenant: str = "acme", models: tuple[str, ...] = ()) -> tuple[str, str]:
        """(token, key id) of a new gateway key."""
        token, row = self.keys.create("test", tenant, principal or self.principal(tenant), models)
        return token, row.id


@contextmanager
def serving_stack(tmp: Path, minilm_dir: Path, plain_model: Path) -> Iterator[Stack]:
    require_isolation()
    with ExitStack() as stack:
        broker = stack.enter_context(running_broker(tmp, plain_model))
        tiny_plain = build_tiny_lm(tmp / "tiny-plain", minilm_dir)
        minilm = publish(broker, "acme", "minilm", minilm_dir, tmp / "minilm-sealed")
        tiny = publish(broker, "acme", "tiny", tiny_plain, tmp / "tiny-sealed")
        sockets = {MINILM: tmp / "minilm.sock", TINY: tmp / "tiny.sock"}
        token = broker.tokens["acme-wl"]
        stack.enter_context(sandboxed_server(broker, token, minilm, sockets[MINILM]))  # type: ignore[arg-type]
        stack.enter_context(sandboxed_server(broker, token, tiny, sockets[TINY]))  # type: ignore[arg-type]
        routes = {**sockets, GLOBEX_TINY: sockets[TINY]}
        url: str = stack.enter_context(gateway_process(broker, routes, *GATEWAY_BUDGETS))  # type: ignore[arg-type]
        store = BrokerStore(read_config(broker.base / "broker.toml").database_url)
        stack.callback(store.close)
        yield Stack(broker, sockets, str(url), tmp, KeyAdmin(store), exits=stack)
