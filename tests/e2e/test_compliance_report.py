"""``weightvault report`` as a real process: a log cosigned by a witness process, a report built from it
in each format, verified offline with the log's and the witness's public keys, and refused after a change."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.servers import free_port, serve
from tests.helpers import require_module
from weightvault.auditlog import AuditEvent, AuditLog, NoteSigner, WitnessPolicy
from weightvault.auditlog.log import LogConfig
from weightvault.auditlog.note import NoteVerifier
from weightvault.auditlog.witness import HTTPWitness

pytestmark = pytest.mark.e2e


def wv(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weightvault", *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def _ev(type: str, resource: str, tenant: str = "acme", **details: object) -> AuditEvent:
    return AuditEvent(type=type, tenant=tenant, actor="op", resource=resource, details=details)


@pytest.fixture(scope="module")
def witnessed_log(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("report")
    keys = {"log": tmp / "log.key", "w1": tmp / "w1.key"}
    assert wv("audit", "keygen", "weightvault-broker/audit", keys["log"]).returncode == 0
    assert wv("witness", "keygen", "w1.test", keys["w1"]).returncode == 0
    port = free_port()
    args = ["witness", "serve", "--key", str(keys["w1"]), "--state", str(tmp / "w1.db")]
    with serve([*args, "--log", f"{keys['log']}.vkey", "--port", str(port)], port) as url:
        vkey = Path(f"{keys['w1']}.vkey").read_text().strip()
        policy = WitnessPolicy.threshold([NoteVerifier.from_vkey(vkey)], 1)
        log_key = NoteSigner.from_skey(keys["log"].read_text())
        witness = HTTPWitness("w1.test", url)
        with AuditLog(
            tmp / "audit.db",
            log_key,
            witnesses=[witness],
            policy=policy,
            config=LogConfig(batch_delay_s=0),
        ) as log:
            log.append(_ev("tenant.change.done", "tenant:acme", op="create"))
            log.append(_ev("model.register.done", "acme/models/llama@1", policy="p", tags={}))
            log.append(_ev("key.release.done", "acme/models/llama@1", verifier="sev-snp"))
            log.publish_now()
            log.append(_ev("approval.policy.change.done", "approval-policy", "-", digest="x"))
            log.publish_now()
        witness.close()
    return {"db": tmp / "audit.db", "log_vkey": Path(f"{keys['log']}.vkey"), "w1_vkey": Path(f"{keys['w1']}.vkey")}


def test_build_verify_render_and_diff(witnessed_log: dict[str, Path], tmp_path: Path) -> None:
    db, log_vkey, w1 = witnessed_log["db"], witnessed_log["log_vkey"], witnessed_log["w1_vkey"]
    built = wv("report", "build", "--db", db, "--tenant", "acme", "--out", tmp_path / "r.json", "--json")
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["controls"]["met"] > 0
    ok = wv("report", "verify", tmp_path / "r.json", "--log-key", log_vkey, "--witness", w1, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["witnesses"] == ["w1.test"]
    # HTML and OSCAL from the same report; the HTML verifies as the JSON does.
    assert wv("report", "render", tmp_path / "r.json", "--format", "html", "--out", tmp_path / "r.html").returncode == 0
    assert wv("report", "verify", tmp_path / "r.html", "--log-key", log_vkey, "--witness", w1).returncode == 0
    assert (
        wv("report", "render", tmp_path / "r.json", "--format", "oscal", "--out", tmp_path / "o.json").returncode == 0
    )
    require_module("trestle")
    from trestle.oscal.assessment_results import AssessmentResults

    AssessmentResults.model_validate(json.loads((tmp_path / "o.json").read_text())["assessment-results"])
    # A change since an earlier report: the approval policy (C06, C07, C18).
    doc = json.loads((tmp_path / "r.json").read_text())
    older = dict(
        doc,
        controls=[
            dict(c, status="not_met", reason="no approval policy is in force: sensitive operations need one person")
            if c["id"] in ("C06", "C07", "C18")
            else c
            for c in doc["controls"]
        ],
    )
    (tmp_path / "old.json").write_text(json.dumps(older))
    diff = wv("report", "diff", tmp_path / "old.json", tmp_path / "r.json", "--json")
    assert diff.returncode == 0, diff.stderr
    assert [c["id"] for c in json.loads(diff.stdout)["changes"]] == ["C06", "C07", "C18"]


def test_refusals_have_their_exit_codes(witnessed_log: dict[str, Path], tmp_path: Path) -> None:
    db, log_vkey, w1 = witnessed_log["db"], witnessed_log["log_vkey"], witnessed_log["w1_vkey"]
    assert wv("report", "build", "--db", db, "--out", tmp_path / "r.json").returncode == 0
    no_witness = wv("report", "verify", tmp_path / "r.json", "--log-key", log_vkey)
    assert no_witness.returncode != 0
    assert "--allow-unwitnessed" in no_witness.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    doc["controls"][1]["status"] = "not_met" if doc["controls"][1]["status"] != "not_met" else "met"
    (tmp_path / "edited.json").write_text(json.dumps(doc))
    edited = wv("report", "verify", tmp_path / "edited.json", "--log-key", log_vkey, "--witness", w1)
    assert edited.returncode == 45
    assert edited.stderr.count("\n") == 1  # one clear line, no traceback
    (tmp_path / "cut.json").write_text((tmp_path / "r.json").read_text()[:500])
    cut = wv("report", "verify", tmp_path / "cut.json", "--log-key", log_vkey, "--witness", w1)
    assert cut.returncode == 45
    (tmp_path / "deep.json").write_text("[" * 100_000)
    deep = wv("report", "verify", tmp_path / "deep.json", "--log-key", log_vkey, "--witness", w1)
    assert (45, 1) == (deep.returncode, deep.stderr.count("\n"))  # once a RecursionError's traceback
    assert "nested too deeply" in deep.stderr
    assert wv("report", "render", tmp_path / "r.json", "--format", "html", "--out", tmp_path / "r.html").returncode == 0
    page = (tmp_path / "r.html").read_text()
    (tmp_path / "edited.html").write_text(page.replace(">not met</span>", ">met</span>", 1))
    edited_page = wv("report", "verify", tmp_path / "edited.html", "--log-key", log_vkey, "--witness", w1)
    assert edited_page.returncode == 45
    assert "report_page" in edited_page.stderr
    other = tmp_path / "other.key"
    assert wv("audit", "keygen", "weightvault-broker/audit", other).returncode == 0
    foreign = wv("report", "verify", tmp_path / "r.json", "--log-key", f"{other}.vkey", "--witness", w1)
    assert foreign.returncode == 43  # the checkpoint is not this log key's
    exists = wv("report", "build", "--db", db, "--out", tmp_path / "r.json")
    assert exists.returncode != 0
    assert "already exists" in exists.stderr


def test_pdf_is_printed_by_the_systems_chromium(witnessed_log: dict[str, Path], tmp_path: Path) -> None:
    from tests.e2e.browser import chromium_path

    chromium_path()  # skips locally (fails in CI) without Chromium
    db = witnessed_log["db"]
    built = wv("report", "build", "--db", db, "--tenant", "acme", "--format", "pdf", "--out", tmp_path / "r.pdf")
    assert built.returncode == 0, built.stderr
    pdf = (tmp_path / "r.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-")
    assert pdf.count(b"/Type /Page") + pdf.count(b"/Type/Page") >= 2  # the page tree and at least one page
    assert wv("report", "build", "--db", db, "--out", tmp_path / "j.json").returncode == 0
    rendered = wv("report", "render", tmp_path / "j.json", "--format", "pdf", "--out", tmp_path / "j.pdf")
    assert rendered.returncode == 0, rendered.stderr
    assert (tmp_path / "j.pdf").read_bytes().startswith(b"%PDF-")


def test_pdf_without_chromium_says_what_to_install(witnessed_log: dict[str, Path], tmp_path: Path) -> None:
    import os

    env = {**os.environ, "WEIGHTVAULT_CHROMIUM": str(tmp_path / "no-such-browser")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "weightvault",
            "report",
            "build",
            "--db",
            str(witnessed_log["db"]),
            "--format",
            "pdf",
            "--out",
            str(tmp_path / "r.pdf"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert done.returncode != 0
    assert "WEIGHTVAULT_CHROMIUM" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "r.pdf").exists()
