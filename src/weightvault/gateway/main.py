"""Build a gateway from the broker's configuration: its database, its audit-hash key, the routes and budgets."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightvault.broker.config import BrokerConfig
from weightvault.broker.storage import BrokerStore
from weightvault.errors import ConfigError, ConflictError
from weightvault.gateway.app import GatewayConfig, Upstream, create_gateway_app, upstream_models
from weightvault.gateway.budgets import DEFAULT_BUDGETS, DEFAULT_MODEL_FRACTION, Budget, Scope, Unit
from weightvault.gateway.sketch import PromptFingerprint
from weightvault.gateway.state import GatewayState, KeyAdmin

__all__ = ["GatewayRuntime", "model_budgets", "open_gateway", "open_key_admin"]


def _nothing() -> None:
    return None


def _store(config: BrokerConfig) -> BrokerStore:
    store = BrokerStore(config.database_url)
    store.migrate(int(time.time()))
    return store


def open_key_admin(config: BrokerConfig) -> tuple[KeyAdmin, BrokerStore]:
    store = _store(config)
    return KeyAdmin(store), store


def model_budgets(sizes: Mapping[str, int], fraction: float, extra: Sequence[Budget]) -> dict[str, list[Budget]]:
    """Per model: ``fraction`` of its effective size in bytes per year (RAND: below 1%), plus any configured
    model budget."""
    out: dict[str, list[Budget]] = {}
    for model, size in sizes.items():
        budgets = [b for b in extra if b.scope is Scope.MODEL]
        if fraction > 0 and not any(b.window == "year" and b.unit is Unit.BYTES for b in budgets):
            budgets.append(Budget(Scope.MODEL, "year", Unit.BYTES, max(1, int(size * fraction))))
        out[model] = budgets
    return out


@dataclass
class GatewayRuntime:
    app: Any
    state: GatewayState
    store: BrokerStore
    budgets: dict[str, list[Budget]]
    release: Callable[[], None] = lambda: None

    def close(self) -> None:
        self.state.close()
        self.release()
        self.store.close()


def open_gateway(
    config: BrokerConfig,
    routes: Mapping[str, str],
    *,
    budgets: Sequence[Budget] = (),
    default_budgets: bool = True,
    model_sizes: Mapping[str, int] | None = None,
    model_fraction: float = DEFAULT_MODEL_FRACTION,
    gateway: GatewayConfig | None = None,
) -> GatewayRuntime:
    """The gateway app over the broker's database.

    Budgets: RAND SL3's defaults (unless ``default_budgets`` is False) replaced per
    (scope, window, unit) by ``budgets``; per model, ``model_fraction`` of its size a year.
    Model sizes come from ``model_sizes`` or, for the others, from each upstream's
    ``/v1/models`` at start (``weightvault serve`` reports it); a model whose size is
    unknown is refused (fail closed: its aggregate budget would be unknown).

    Raises:
        ConfigError: a route or budget is unusable, or a model's size is unknown.
    """
    from weightvault.sealing.keyfiles import read_secret_file

    if not routes:
        raise ConfigError("the gateway needs at least one --route MODEL=UPSTREAM")
    upstreams = {model: Upstream(target) for model, target in routes.items()}
    chosen: dict[tuple[Scope, str, Unit], Budget] = {}
    for b in (*(DEFAULT_BUDGETS if default_budgets else ()), *budgets):
        chosen[(b.scope, b.window, b.unit)] = b
    sizes = dict(model_sizes or {})
    unknown = {m: u for m, u in upstreams.items() if m not in sizes}
    if unknown:
        try:
            sizes.update(upstream_models(unknown))
        except Exception as exc:
            raise ConfigError(f"cannot ask the upstreams for their models' sizes: {exc}") from exc
    missing = sorted(set(upstreams) - set(sizes))
    if missing:
        raise ConfigError(f"unknown size of {', '.join(missing)}: pass --model-bytes MODEL=BYTES")
    key = read_secret_file(config.path(config.keys.audit_hash), "weightvault.hash-key")
    fingerprint = PromptFingerprint(key, Path(config.keys.audit_hash).stem)
    per_model = model_budgets(sizes, model_fraction, list(chosen.values()))
    store = _store(config)
    release: Callable[[], None] = _nothing
    if not store.db.shared:
        try:
            # On SQLite the budget ledger is this process's memory (ADR 0010): a second gateway
            # would hold its own copy and let every budget be spent twice. On PostgreSQL the
            # gateways share the buckets through reservations (ADR 0014) and any number may run.
            release = store.db.claim("gateway")
        except ConflictError as exc:
            store.close()
            raise ConfigError(
                "another gateway serves this broker's SQLite database: run one gateway per SQLite database "
                "(on PostgreSQL, several gateways share the budgets)"
            ) from exc
    state = GatewayState(store, list(chosen.values()), per_model)
    gw = gateway or GatewayConfig(routes=upstreams)
    if gw.routes != upstreams:
        gw = GatewayConfig(
            routes=upstreams,
            max_body_bytes=gw.max_body_bytes,
            max_n=gw.max_n,
            max_tokens=gw.max_tokens,
            max_logprobs=gw.max_logprobs,
            log_prompts=gw.log_prompts,
        )
    return GatewayRuntime(create_gateway_app(state, gw, fingerprint), state, store, per_model, release)
