"""``weightvault serve``, ``sandbox`` and ``gateway``: sealed models served behind isolation and budgets."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from weightvault.cli.options import (
    attester_options,
    client_options,
    json_option,
    make_client,
    open_attester,
    read_token,
    report,
)
from weightvault.errors import ConfigError

__all__ = ["gateway", "sandbox", "serve"]


@click.command()
@click.argument("sealed", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--uds", type=click.Path(path_type=Path), help="Listen on this Unix socket instead of TCP.")
@click.option("--task", type=click.Choice(["auto", "embed", "generate"]), default="auto", show_default=True)
@click.option("--name", help="The model's name in the API (default: its broker resource, TENANT/models/NAME@VERSION).")
@click.option("--device", default="cpu", show_default=True, help="cpu, or cuda:N (weights decrypted on the GPU).")
@click.option("--max-tokens", type=click.IntRange(1, 1 << 16), default=1024, show_default=True)
@click.option("--max-input-tokens", type=click.IntRange(1, 1 << 20), default=512, show_default=True)
@click.option("--max-logprobs", type=click.IntRange(0, 20), default=0, show_default=True, help="0: none returned.")
@attester_options
@client_options
def serve(
    sealed: Path,
    host: str,
    port: int,
    uds: Path | None,
    task: str,
    name: str | None,
    device: str,
    max_tokens: int,
    max_input_tokens: int,
    max_logprobs: int,
    attester: str,
    device_id: str | None,
    endorsement: Path | None,
    tcti: str | None,
    event_logs: tuple[Path, ...],
    url: str | None,
    token: str | None,
    ca: Path | None,
) -> None:
    """Serve SEALED (a sealed model directory) with OpenAI's API; its keys come from the broker by attestation."""
    import uvicorn

    from weightvault.client.broker import BrokerIdentity
    from weightvault.serving.app import ServeLimits, create_serving_app
    from weightvault.serving.runtime import ModelRuntime

    client = make_client(url, token, ca)
    chosen = open_attester(attester, tcti, device_id, event_logs, endorsement)
    identity = BrokerIdentity(client, chosen, device_id=device_id)
    try:
        runtime = ModelRuntime.load(
            sealed,
            [identity],
            task=None if task == "auto" else task,  # type: ignore[arg-type]
            name=name or "",
            device=device,
        )
        runtime.name = name or (identity.resources[0] if identity.resources else sealed.name)
    finally:
        identity.wipe()
        client.close()
        close = getattr(chosen, "close", None)
        if close is not None:
            close()
    limits = ServeLimits(max_input_tokens=max_input_tokens, max_tokens=max_tokens, max_logprobs=max_logprobs)
    where = f"unix:{uds}" if uds else f"http://{host}:{port}"
    click.echo(f"serving {runtime.name} ({runtime.task}, {runtime.bytes / 1e6:.1f} MB) at {where}", err=True)
    sys.stderr.flush()
    kwargs: dict[str, Any] = {"uds": str(uds)} if uds else {"host": host, "port": port}
    uvicorn.run(create_serving_app(runtime, limits), log_level="warning", access_log=False, **kwargs)


@click.command(context_settings={"ignore_unknown_options": False})
@click.option("--model", type=click.Path(path_type=Path, exists=True), help="Sealed model to mount (read-only).")
@click.option(
    "--publish", "publish", multiple=True, help="SOCKET_PATH=PORT: reach the sandbox's port through a Unix socket."
)
@click.option(
    "--allow", "allow", multiple=True, help="IP:PORT the command may reach besides the broker (no wildcards)."
)
@click.option(
    "--loopback-port",
    "loopback",
    multiple=True,
    type=click.IntRange(1, 65535),
    help="Port on the sandbox's own loopback the command may use (e.g. an engine's workers).",
)
@click.option(
    "--ro-bind",
    "ro_binds",
    multiple=True,
    type=click.Path(path_type=Path, exists=True),
    help="Extra path to mount read-only.",
)
@click.option("--env", "env", multiple=True, help="NAME or NAME=VALUE to set inside (NAME alone copies it from here).")
@click.option("--user", default="nobody", show_default=True, help="Unprivileged user the command runs as.")
@click.option("--gpu", is_flag=True, help="Expose /dev/nvidia* and /dev/dri to the command.")
@click.option("--report-interval", type=float, default=1.0, show_default=True, help="Seconds between egress reports.")
@click.option(
    "--unsafe-no-isolation", is_flag=True, help="Run the command WITHOUT isolation (never a silent fallback)."
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@client_options
def sandbox(
    model: Path | None,
    publish: tuple[str, ...],
    allow: tuple[str, ...],
    loopback: tuple[int, ...],
    ro_binds: tuple[Path, ...],
    env: tuple[str, ...],
    user: str,
    gpu: bool,
    report_interval: float,
    unsafe_no_isolation: bool,
    command: tuple[str, ...],
    url: str | None,
    token: str | None,
    ca: Path | None,
) -> None:
    """Run COMMAND so that it reaches nothing but the broker: weightvault sandbox [OPTIONS] -- CMD [ARGS]..."""
    from weightvault.sandbox.launcher import Sandbox, SandboxOptions
    from weightvault.sandbox.policy import parse_allow, parse_publish

    client = make_client(url, token, ca)
    variables: dict[str, str] = {}
    for item in env:
        name, sep, value = item.partition("=")
        if not sep:
            if name not in os.environ:
                raise ConfigError(f"--env {name}: not set here")
            value = os.environ[name]
        variables[name] = value
    variables.setdefault("WEIGHTVAULT_TOKEN", read_token(token))
    options = SandboxOptions(
        command=list(command),
        broker_url=client.url,
        model=model,
        publish=[parse_publish(p) for p in publish],
        allow=[parse_allow(a) for a in allow],
        loopback_ports=list(loopback),
        ro_paths=list(ro_binds),
        env=variables,
        user=user,
        gpu=gpu,
        unsafe_no_isolation=unsafe_no_isolation,
        report_interval_s=report_interval,
    )

    def report(events: list[dict[str, Any]]) -> None:
        client.request("POST", "/v1/reports", {"events": events})

    try:
        status = Sandbox(options, report).run()
    finally:
        client.close()
    sys.exit(status)


@click.group()
def gateway() -> None:
    """The OpenAI-compatible gateway in front of sandboxed models: API keys, output budgets, audit."""


def _config(path: Path) -> Any:
    from weightvault.server.broker_main import read_config

    return read_config(path)


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"{what} {v!r}: expected KEY=VALUE")
        out[key] = value
    return out


_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, exists=True),
    required=True,
    help="The broker's broker.toml (its database and keys).",
)


@gateway.command("serve")
@_config_option
@click.option(
    "--route",
    "routes",
    multiple=True,
    required=True,
    help="MODEL=UPSTREAM, e.g. acme/models/minilm@1=unix:/run/minilm.sock.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option(
    "--budget",
    "budgets",
    multiple=True,
    help="SCOPE.WINDOW.UNIT=LIMIT, e.g. key.hour.bytes=400000 (replaces that default).",
)
@click.option(
    "--no-default-budgets",
    is_flag=True,
    help="Drop RAND SL3's defaults (400 KB/h, 1 GB/month per key, principal, tenant).",
)
@click.option(
    "--model-bytes",
    "model_bytes",
    multiple=True,
    help="MODEL=BYTES: the model's effective size (4 bits per parameter), when its upstream does not say.",
)
@click.option(
    "--model-fraction",
    type=float,
    default=0.01,
    show_default=True,
    help="Aggregate budget per model: this fraction of its effective size per year.",
)
@click.option("--max-tokens", type=click.IntRange(1, 1 << 16), default=1024, show_default=True)
@click.option("--max-logprobs", type=click.IntRange(0, 20), default=0, show_default=True)
@click.option("--log-prompts", is_flag=True, help="Also record prompt text (first 4 KiB) in the audit log.")
def gateway_serve(
    config_path: Path,
    routes: tuple[str, ...],
    host: str,
    port: int,
    budgets: tuple[str, ...],
    no_default_budgets: bool,
    model_bytes: tuple[str, ...],
    model_fraction: float,
    max_tokens: int,
    max_logprobs: int,
    log_prompts: bool,
) -> None:
    """Serve the gateway; state (keys, budgets) in the broker's database, events to its audit log."""
    import uvicorn

    from weightvault.gateway.app import GatewayConfig
    from weightvault.gateway.budgets import parse_budget
    from weightvault.gateway.main import open_gateway

    sizes = {}
    for model, size in _pairs(model_bytes, "--model-bytes").items():
        if not size.isdigit() or int(size) <= 0:
            raise ConfigError(f"--model-bytes {model}={size}: a positive number of bytes")
        sizes[model] = int(size)
    route_map = _pairs(routes, "--route")
    runtime = open_gateway(
        _config(config_path),
        route_map,
        budgets=[parse_budget(b) for b in budgets],
        default_budgets=not no_default_budgets,
        model_sizes=sizes,
        model_fraction=model_fraction,
        gateway=GatewayConfig(routes={}, max_tokens=max_tokens, max_logprobs=max_logprobs, log_prompts=log_prompts),
    )
    click.echo(f"gateway at http://{host}:{port} for {', '.join(route_map)}", err=True)
    try:
        uvicorn.run(runtime.app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        runtime.close()


@gateway.group("key")
def key() -> None:
    """API keys of the gateway (stored hashed in the broker's database)."""


@key.command("create")
@_config_option
@click.option("--tenant", required=True)
@click.option("--principal", required=True, help="The workload principal the key acts for.")
@click.option(
    "--model", "models", multiple=True, help="Limit the key to this model (repeatable; default: all of the tenant's)."
)
@click.option(
    "--out", type=click.Path(path_type=Path), help="Write the key to this file (mode 0600) instead of printing it."
)
@json_option
def key_create(
    config_path: Path, tenant: str, principal: str, models: tuple[str, ...], out: Path | None, as_json: bool
) -> None:
    """Create an API key; it is shown once."""
    from weightvault.gateway.main import open_key_admin

    admin, store = open_key_admin(_config(config_path))
    try:
        token, row = admin.create("cli:operator", tenant, principal, models)
    finally:
        store.close()
    if out is not None:
        from weightvault.files import atomic_file

        with atomic_file(out, mode=0o600) as f:
            f.write(token.encode() + b"\n")
    doc = {"id": row.id, "tenant": tenant, "principal": principal, "models": list(models)}
    if out is not None:
        report(as_json, f"created key {row.id} for {principal} ({tenant}); written to {out}", doc | {"key_file": out})
    else:  # shown this once, on stdout, as asked
        report(as_json, token, doc | {"key": token})


@key.command("revoke")
@_config_option
@click.argument("key_id")
@json_option
def key_revoke(config_path: Path, key_id: str, as_json: bool) -> None:
    """Revoke a key: its next request fails."""
    from weightvault.gateway.main import open_key_admin

    admin, store = open_key_admin(_config(config_path))
    try:
        row = admin.revoke("cli:operator", key_id)
    finally:
        store.close()
    text = f"revoked key {row.id} of {row.principal} ({row.tenant})"
    report(as_json, text, {"id": row.id, "tenant": row.tenant, "principal": row.principal, "revoked": True})


@key.command("list")
@_config_option
@click.option("--tenant")
@json_option
def key_list(config_path: Path, tenant: str | None, as_json: bool) -> None:
    """List keys (ids, principals, models; never secrets)."""
    from weightvault.gateway.main import open_key_admin

    admin, store = open_key_admin(_config(config_path))
    try:
        rows = admin.list(tenant)
    finally:
        store.close()
    keys = [
        {
            "id": r.id,
            "tenant": r.tenant,
            "principal": r.principal,
            "models": list(r.models),
            "revoked": r.revoked_at is not None,
        }
        for r in rows
    ]
    lines = [
        f"{r.id}  {r.tenant}  {r.principal}  {','.join(r.models) or '(all models)'}"
        + ("  revoked" if r.revoked_at is not None else "")
        for r in rows
    ]
    report(as_json, lines, {"keys": keys})
