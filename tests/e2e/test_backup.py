"""Backups of a running broker, restored into a new directory, and the rollback they must never cause.

The hazard: a restored backup that silently brings back a disabled principal, a revoked
device or an older policy. A restore is compared with the checkpoints already seen (the
witnesses', the old log) and refused when the log moved on after the backup.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.e2e.broker_fixture import Broker, running_broker
from tests.e2e.servers import serve_broker
from weightvault.auditlog.log import LogReader
from weightvault.client.broker import BrokerClient, SampleAttester
from weightvault.errors import AuthenticationError, SealedError

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RESOURCE = "acme/models/small@1"
ORIGIN = "weightvault-broker/audit"


def wv(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weightvault", *map(str, args)], check=False, capture_output=True, text=True, timeout=180
    )


def _checkpoint(broker: Broker, out: Path) -> Path:
    """The log's newest checkpoint, as a witness or a monitor would hold it."""
    broker.audit_size()  # let queued events commit
    with LogReader.open(broker.base / "data" / "audit.db", ORIGIN) as log:
        out.write_text(log.latest_checkpoint().to_text())
    return out


def _release(url: str, token: str) -> bytes:
    with BrokerClient(url, token) as client:
        session, _ = client.attest(SampleAttester())
        keys = client.release(session, RESOURCE)
    assert keys.file_key is not None
    return keys.file_key.reveal()


@pytest.fixture
def backed_up(tmp_path: Path) -> Iterator[tuple[Broker, Path, Path]]:
    """A running broker with a release in its log, a backup taken while it runs, and the checkpoint then."""
    plain = tmp_path / "small.safetensors"
    save_file({"w": np.arange(256, dtype=np.float32)}, str(plain))
    with running_broker(tmp_path, plain) as broker:
        _release(broker.url, broker.tokens["acme-wl"])
        backup = tmp_path / "broker.wvbackup"
        made = wv("broker", "backup", "--config", broker.base / "broker.toml", "--out", backup)
        assert 0 == made.returncode, made.stderr
        assert "no running broker" not in made.stderr  # the broker recorded it before the snapshot
        assert (backup.stat().st_mode & 0o777) == 0o600
        yield broker, backup, _checkpoint(broker, tmp_path / "at-backup.note")


def _restore(broker: Broker, backup: Path, into: Path, *options: str | Path) -> subprocess.CompletedProcess[str]:
    keys = broker.base / "keys"
    done = wv(
        "broker", "restore", backup, "--into", into, "--root-key", keys / "root.key",
        "--vkey", keys / "audit-log.key.vkey", *options,
    )  # fmt: skip
    if done.returncode == 0:
        # Files the configuration names besides its keys (here the token verifier's JWKS) are
        # the operator's to put back, as they would TLS certificates or TPM roots.
        (into / "jwks.json").write_bytes((broker.base / "jwks.json").read_bytes())
    return done


def test_a_backup_restores_into_a_new_broker_that_serves_the_same_keys(
    backed_up: tuple[Broker, Path, Path], tmp_path: Path
) -> None:
    broker, backup, at_backup = backed_up
    expected = broker.file_keys["acme"].reveal()
    into = tmp_path / "restored"
    done = _restore(broker, backup, into, "--checkpoint", at_backup)
    assert 0 == done.returncode, done.stderr
    assert "restored into" in done.stdout
    assert (into / "keys" / "root.key").stat().st_mode & 0o777 == 0o600
    with serve_broker(into) as url:
        assert expected == _release(url, broker.tokens["acme-wl"])  # principals, models, policies, keys
    with LogReader.open(into / "data" / "audit.db", ORIGIN) as log:
        log.fsck()
        events = [e for _, e in log.events()]
        restores = [e for e in events if e.type == "broker.restore"]
    assert 1 == len(restores)
    # The backup holds its own record, made before its snapshot (compliance reports show its age).
    backups = [e for e in events if e.type == "broker.backup"]
    assert 1 == len(backups)
    assert "the root key" == backups[0].details["sealed_to"]
    assert [at_backup.name] == [c["source"] for c in restores[0].details["checked_against"]]


def test_an_old_backup_is_refused_once_the_log_has_moved_on(
    backed_up: tuple[Broker, Path, Path], tmp_path: Path
) -> None:
    """After the backup, a principal is disabled. A witness's checkpoint, or the old log, shows it:
    the restore is refused (exit 44) and writes nothing. Unchecked, the principal would be back."""
    broker, backup, _ = backed_up
    broker.client("operator").disable_principal("acme-wl2")
    with pytest.raises(AuthenticationError):
        _release(broker.url, broker.tokens["acme-wl2"])
    later = _checkpoint(broker, tmp_path / "later.note")
    for options in (("--checkpoint", later), ("--old-log", broker.base / "data" / "audit.db")):
        into = tmp_path / f"refused-{options[0].strip('-')}"
        refused = _restore(broker, backup, into, *options)
        assert 44 == refused.returncode, refused.stderr
        assert "roll" in refused.stderr
        assert not into.exists()
    # What the check prevents: the same backup restored blind brings the principal back.
    into = tmp_path / "blind"
    blind = _restore(broker, backup, into, "--unchecked")
    assert 0 == blind.returncode, blind.stderr
    assert "WARNING" in blind.stdout
    with serve_broker(into) as url:
        assert broker.file_keys["acme"].reveal() == _release(url, broker.tokens["acme-wl2"])


def test_a_tampered_backup_or_the_wrong_keys_are_refused(backed_up: tuple[Broker, Path, Path], tmp_path: Path) -> None:
    broker, backup, at_backup = backed_up
    data = bytearray(backup.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the sealed payload
    tampered = tmp_path / "tampered.wvbackup"
    tampered.write_bytes(bytes(data))
    assert 16 == _restore(broker, tampered, tmp_path / "t", "--checkpoint", at_backup).returncode
    other = tmp_path / "other"
    assert 0 == wv("broker", "init", other).returncode
    keys = broker.base / "keys"
    wrong_vkey = wv(
        "broker", "restore", backup, "--into", tmp_path / "v", "--root-key", keys / "root.key",
        "--vkey", other / "keys" / "audit-log.key.vkey", "--unchecked",
    )  # fmt: skip
    assert 16 == wrong_vkey.returncode, wrong_vkey.stderr
    wrong_root = wv(
        "broker", "restore", backup, "--into", tmp_path / "r", "--root-key", other / "keys" / "root.key",
        "--vkey", keys / "audit-log.key.vkey", "--checkpoint", at_backup,
    )  # fmt: skip
    assert 20 == wrong_root.returncode, wrong_root.stderr
    for name in ("t", "v", "r"):
        assert not (tmp_path / name).exists()
    no_check = _restore(broker, backup, tmp_path / "n")
    assert 60 == no_check.returncode
    assert "--checkpoint" in no_check.stderr


def _settled_log(where: str | Path) -> LogReader:
    """A reader of a broker's log (a SQLite file, or a replicated broker's PostgreSQL database)
    once it has stopped growing: a release's queued done event commits a moment after it."""
    from weightvault.auditlog.pgstorage import PostgresLogStorage

    def reader() -> LogReader:
        if isinstance(where, Path):
            return LogReader.open(where, ORIGIN)
        return LogReader(PostgresLogStorage(where, ORIGIN))

    size = -1
    while True:
        with reader() as log:
            if size == log.size:
                break
            size = log.size
        time.sleep(0.2)
    return reader()


@pytest.mark.parametrize("log_in", ["file", "database"])
def test_an_approved_rollback_keeps_the_newer_log_and_holds_what_changed_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_in: str
) -> None:
    """The issue's override: two approvers of the approval policy sign the rollback offline; the
    restore keeps the old broker's (newer) log, and the principal disabled after the backup is
    held, so it stays out although the restored database says it is enabled. One approval is
    not enough; the request binds this backup and that log head. With replicas the old log is
    the one in their PostgreSQL database, and the kept log goes into the new database."""
    from tests import databases
    from weightvault.errors import ContainedError

    replicated = log_in == "database"
    if replicated and databases.backend() != "postgresql":
        pytest.skip("a replicated log needs PostgreSQL: runs in the --database postgresql pass")
    database = databases.fresh_url(tmp_path) if replicated else None

    monkeypatch.setenv("WEIGHTVAULT_PASSPHRASE", "correct horse battery staple")
    for name in ("alice", "bob"):
        assert 0 == wv("person", "keygen", name, "--out", tmp_path / f"{name}.key").returncode
    approvers = {
        n: {k: v for k, v in json.loads((tmp_path / f"{n}.key.pub").read_text()).items() if k in ("signing", "hpke")}
        for n in ("alice", "bob")
    }
    policy = {
        "approvers": approvers,
        "groups": {"sec": ["alice", "bob"]},
        "rules": [{"op": "approval.policy.change", "require": [{"group": "sec", "count": 2}]}],
    }
    plain = tmp_path / "small.safetensors"
    save_file({"w": np.arange(256, dtype=np.float32)}, str(plain))
    backup = tmp_path / "broker.wvbackup"
    with running_broker(tmp_path, plain, database_url=database, replicated=replicated) as broker:
        broker.client("operator").put_approval_policy(policy)
        assert 0 == wv("broker", "backup", "--config", broker.base / "broker.toml", "--out", backup).returncode
        broker.client("operator").disable_principal("acme-wl2")
    old_log: str | Path = database or broker.base / "data" / "audit.db"
    with _settled_log(old_log) as log:
        old_size = log.size
    request, into = tmp_path / "restore-request.json", tmp_path / "restored"
    target = databases.fresh_url(tmp_path) if replicated else None
    override: tuple[str | Path, ...] = ("--old-log", old_log, "--approval-request", request)
    if target is not None:
        override += ("--database-url", target)
    refused = _restore(broker, backup, into, *override)
    assert 44 == refused.returncode, refused.stderr
    assert "approval sign-file" in refused.stderr
    assert "broker.restore" in request.read_text()
    for name in ("alice", "bob"):
        signed = wv(
            "approval",
            "sign-file",
            request,
            "--key",
            tmp_path / f"{name}.key",
            "--out",
            tmp_path / f"{name}.ok",
            "--yes",
        )
        assert 0 == signed.returncode, signed.stderr
    one = _restore(broker, backup, into, *override, "--approval", tmp_path / "alice.ok")
    assert 81 == one.returncode, one.stderr  # approval required: 2 of sec
    assert not into.exists()
    done = _restore(
        broker, backup, into, *override, "--approval", tmp_path / "alice.ok", "--approval", tmp_path / "bob.ok"
    )
    assert 0 == done.returncode, done.stderr
    assert "ROLLBACK approved by alice, bob" in done.stdout
    with serve_broker(into, replica="restored-1" if replicated else None) as url:
        assert broker.file_keys["acme"].reveal() == _release(url, broker.tokens["acme-wl"])
        with pytest.raises(ContainedError):
            _release(url, broker.tokens["acme-wl2"])
    with _settled_log(target or into / "data" / "audit.db") as log:
        log.fsck()
        assert log.size > old_size  # the old log went on, plus the restore and what the test did
        restore = next(e for _, e in log.events(start=old_size) if e.type == "broker.restore")
    assert ["alice", "bob"] == restore.details["rollback"]["approved_by"]
    assert 1 <= restore.details["rollback"]["holds"]


def test_restore_asks_the_witnesses_and_refuses_what_they_have_seen_past(tmp_path: Path) -> None:
    """--witnesses: each configured witness's newest cosigned checkpoint (GET /latest/<origin>) is a
    head the backup must reach. A witness that saw more refuses the restore; one that cannot be
    reached refuses it too, with the way out (--checkpoint)."""
    import time

    from tests.databases import init_options
    from tests.e2e.servers import free_port, serve
    from weightvault.auditlog.checkpoint import Checkpoint
    from weightvault.auditlog.note import parse_note
    from weightvault.auditlog.witness import HTTPWitness

    base = tmp_path / "b"
    assert 0 == wv("broker", "init", base, "--insecure-sample", *init_options()).returncode
    assert 0 == wv("witness", "keygen", "w1.test", tmp_path / "w1.key").returncode
    port = free_port()
    witness_args = ["witness", "serve", "--key", str(tmp_path / "w1.key"), "--state", str(tmp_path / "w1.db")]
    witness_args += ["--log", str(base / "keys" / "audit-log.key.vkey"), "--port", str(port)]
    backup, op_token = tmp_path / "b.wvbackup", (base / "operator.token").read_text().strip()

    def witnessed(url: str) -> int:
        w = HTTPWitness("w1.test", url)
        try:
            text = w.latest(ORIGIN)
        finally:
            w.close()
        return -1 if text is None else Checkpoint.from_text(parse_note(text).text).size

    def caught_up(url: str) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with LogReader.open(base / "data" / "audit.db", ORIGIN) as log:
                size = log.size
            if witnessed(url) == size:
                return
            time.sleep(0.1)
        raise AssertionError("the witness did not catch up")

    def restore(into: str) -> subprocess.CompletedProcess[str]:
        return wv(
            "broker", "restore", backup, "--into", tmp_path / into, "--root-key", base / "keys" / "root.key",
            "--vkey", base / "keys" / "audit-log.key.vkey", "--witnesses",
        )  # fmt: skip

    with serve(witness_args, port) as witness_url:
        vkey = (tmp_path / "w1.key.vkey").read_text().strip()
        config = (base / "broker.toml").read_text()
        entry = f'witnesses = [{{ name = "w1.test", url = "{witness_url}", vkey = "{vkey}" }}]\nquorum = 1'
        (base / "broker.toml").write_text(config.replace("quorum = 0", entry))
        with serve_broker(base) as url, BrokerClient(url, op_token) as op:
            op.create_tenant("acme")
            caught_up(witness_url)
            assert 0 == wv("broker", "backup", "--config", base / "broker.toml", "--out", backup).returncode
        at_backup = restore("restored-a")
        assert 0 == at_backup.returncode, at_backup.stderr
        with serve_broker(base) as url, BrokerClient(url, op_token) as op:
            op.create_tenant("globex")  # after the backup, and the witness sees it
            caught_up(witness_url)
        behind = restore("restored-b")
        assert 44 == behind.returncode, behind.stderr
        assert "witness w1.test" in behind.stderr
    unreachable = restore("restored-c")
    assert 50 == unreachable.returncode, unreachable.stderr
    assert "--checkpoint" in unreachable.stderr
    # A witness that answers "nothing of this log" (unsigned) cannot vouch: refused, not skipped.
    assert 0 == wv("audit", "keygen", "other.test/audit", tmp_path / "other.key").returncode
    witness_args[witness_args.index("--log") + 1] = str(tmp_path / "other.key.vkey")
    witness_args[witness_args.index("--state") + 1] = str(tmp_path / "w1-other.db")
    with serve(witness_args, port):
        blind = restore("restored-d")
    assert 43 == blind.returncode, blind.stderr
    assert "cannot vouch" in blind.stderr
    assert not (tmp_path / "restored-d").exists()
    assert not (tmp_path / "restored-b").exists()
    assert not (tmp_path / "restored-c").exists()


def test_a_replicated_brokers_log_is_backed_up_from_the_database_and_restored_into_the_new_one(
    tmp_path: Path,
) -> None:
    """With ``[audit] storage = "database"`` the log lives in PostgreSQL: the backup cuts it at its
    head into the archive, and the restore loads it (with its broker.restore event) into the
    new database, where the new broker's replicas carry it on."""
    from tests import databases
    from weightvault.auditlog.pgstorage import PostgresLogStorage

    if databases.backend() != "postgresql":
        pytest.skip("a replicated log needs PostgreSQL: runs in the --database postgresql pass")
    plain = tmp_path / "small.safetensors"
    save_file({"w": np.arange(256, dtype=np.float32)}, str(plain))
    database = databases.fresh_url(tmp_path)
    with running_broker(tmp_path, plain, database_url=database, replicated=True) as broker:
        expected = _release(broker.url, broker.tokens["acme-wl"])
        with LogReader(PostgresLogStorage(database, ORIGIN)) as log:
            size = -1
            while size != log.size:  # the release's queued done event commits a moment later
                size = log.size
                time.sleep(0.2)
            backup = tmp_path / "broker.wvbackup"
            made = wv("broker", "backup", "--config", broker.base / "broker.toml", "--out", backup)
            assert 0 == made.returncode, made.stderr
            at_backup = tmp_path / "at-backup.note"
            at_backup.write_text(log.latest_checkpoint().to_text())
            # The backup's own record, appended before its snapshot, is the only event since.
            assert size + 1 == log.size
            assert "broker.backup" == log.event(size).type
            size += 1  # the backup's log ends with its own record
        _release(broker.url, broker.tokens["acme-wl"])  # the log in the database moves past the backup
    # The old log may be the one in the database (a replica's disk is not where it lives).
    no_options: list[str | Path] = []
    for options, why in (
        (no_options, "the old log database has seen size"),
        (["--approval-request", tmp_path / "request.json"], "the backup has no approval policy"),
    ):
        old = _restore(broker, backup, tmp_path / "refused", "--old-log", database, *options)
        assert 44 == old.returncode, old.stderr
        assert why in old.stderr
        assert database not in old.stderr + old.stdout  # a URL may carry a password
        assert not (tmp_path / "refused").exists()
    into = tmp_path / "restored"
    target = databases.fresh_url(tmp_path)
    done = _restore(broker, backup, into, "--checkpoint", at_backup, "--database-url", target)
    assert 0 == done.returncode, done.stderr
    assert not (into / "data" / "audit.db").exists()  # the log went into the database
    with serve_broker(into, replica="restored-1") as url:
        assert expected == _release(url, broker.tokens["acme-wl"])
    with LogReader(PostgresLogStorage(target, ORIGIN)) as log:
        assert log.fsck() > size
        events = [e for _, e in log.events()]
    assert [e.type for e in events[size : size + 1]] == ["broker.restore"]
    assert events[size + 1].type == "log.handover"


def _submit_file(
    tmp_path: Path, request: Path, custodian: str, share: Path, out: Path, announced: str
) -> subprocess.CompletedProcess[str]:
    return wv(
        "custody", "submit-file", request, "--ceremony", announced, "--key", tmp_path / f"{custodian}.key",
        "--share", share, "--out", out, "--yes",
    )  # fmt: skip


def _submit(tmp_path: Path, request: Path, custodian: str, share: Path, out: Path) -> None:
    announced = json.loads(request.read_text())["id"][:16]  # what the operator reads out to custodians
    made = _submit_file(tmp_path, request, custodian, share, out, announced)
    assert 0 == made.returncode, made.stderr
    assert "RESTORE the backup of" in made.stdout  # the custodian saw which backup they open


def _unseal(url: str, operator: str, tmp_path: Path, shares: Path, custodians: tuple[str, str]) -> None:
    opened = wv("custody", "open", "unseal", "--broker", url, "--token", operator)
    assert 0 == opened.returncode, opened.stderr
    ceremony = opened.stdout.split()[1]
    for name in custodians:
        done = wv(
            "custody", "submit", ceremony, "--broker", url, "--key", tmp_path / f"{name}.key",
            "--share", shares / f"{name}.share", "--yes",
        )  # fmt: skip
        assert 0 == done.returncode, done.stderr


def test_a_broker_under_custody_is_backed_up_without_its_root_key_and_restored_by_a_quorum(
    tmp_path: Path,
) -> None:
    """The backup is sealed to the share set's backup key; restoring it takes M custodians' shares,
    given as files to a ceremony the restore runs. One share, junk or a forged submission opens
    nothing; an old backup is refused before any custodian is asked; the restored broker starts
    sealed, under the same custody, and serves the same keys once unsealed."""
    for name in ("ann", "ben", "cat"):
        assert 0 == wv("person", "keygen", name, "--out", tmp_path / f"{name}.key", "--no-passphrase").returncode
    plain = tmp_path / "small.safetensors"
    save_file({"w": np.arange(256, dtype=np.float32)}, str(plain))
    with running_broker(tmp_path, plain) as broker:
        expected = _release(broker.url, broker.tokens["acme-wl"])
    base, operator = broker.base, broker.tokens["operator"]
    genesis = wv(
        "custody", "genesis", "--config", base / "broker.toml", "--threshold", "2",
        *[a for n in ("ann", "ben", "cat") for a in ("--custodian", tmp_path / f"{n}.key.pub")],
    )  # fmt: skip
    assert 0 == genesis.returncode, genesis.stderr
    shares = next((base / "custody").iterdir())
    backup = tmp_path / "custody.wvbackup"
    made = wv("broker", "backup", "--config", base / "broker.toml", "--out", backup)
    assert 0 == made.returncode, made.stderr
    assert f"share set {shares.name}'s backup key" in made.stdout
    with LogReader.open(base / "data" / "audit.db", ORIGIN) as log:
        (tmp_path / "at-backup.note").write_text(log.latest_checkpoint().to_text())
    vkey = base / "keys" / "audit-log.key.vkey"
    exchange = tmp_path / "exchange"
    exchange.mkdir()

    # No root key file stands in for the custodians, and a restore needs its ceremony.
    stray = tmp_path / "stray.key"
    stray.write_bytes(b"not the root key")
    with_root: list[str | Path] = ["--root-key", stray]
    for options in (with_root, []):
        refused = wv("broker", "restore", backup, "--into", tmp_path / "r0", "--vkey", vkey, "--unchecked", *options)
        assert 60 == refused.returncode, refused.stderr
        assert "made under custody" in refused.stderr

    # The broker goes on under custody after the backup: its log moves past it.
    with serve_broker(base) as url:
        _unseal(url, operator, tmp_path, shares, ("ann", "ben"))
        _release(url, broker.tokens["acme-wl"])
    with LogReader.open(base / "data" / "audit.db", ORIGIN) as log:
        (tmp_path / "newer.note").write_text(log.latest_checkpoint().to_text())
    old = wv(
        "broker", "restore", backup, "--into", tmp_path / "r1", "--vkey", vkey,
        "--checkpoint", tmp_path / "newer.note", "--ceremony-dir", exchange,
    )  # fmt: skip
    assert 44 == old.returncode, old.stderr  # refused on the signed manifest alone, before any ceremony
    assert [] == list(exchange.iterdir())
    assert not (tmp_path / "r1").exists()

    into = tmp_path / "restored"
    restore = subprocess.Popen(
        [sys.executable, "-m", "weightvault", "broker", "restore", backup, "--into", into, "--vkey", vkey,
         "--checkpoint", tmp_path / "at-backup.note", "--ceremony-dir", exchange, "--ceremony-ttl", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        request = exchange / "restore-request.json"
        deadline = time.monotonic() + 60
        while not request.exists():
            assert restore.poll() is None, restore.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # Whoever can write the exchange directory can put a request of their own there, with a
        # key of their own: without the id the operator announced, no custodian answers it.
        from weightvault.crypto.keywrap import hpke_generate
        from weightvault.custody.ceremony import CeremonyTerms
        from weightvault.custody.person import KEM

        genuine = json.loads(request.read_text())
        forged_terms = {k: v for k, v in genuine.items() if k != "id"} | {"key": hpke_generate(KEM)[1].hex()}
        fake = tmp_path / "forged-request.json"
        fake.write_text(json.dumps(CeremonyTerms.from_json(forged_terms).to_json()))
        lured = _submit_file(tmp_path, fake, "ben", shares / "ben.share", tmp_path / "lured.sub", genuine["id"][:16])
        assert 87 == lured.returncode, lured.stderr
        assert not (tmp_path / "lured.sub").exists()
        (exchange / "junk.submission").write_text("{not json")
        _submit(tmp_path, request, "ann", shares / "ann.share", exchange / "ann.submission")
        # ann's submission replayed under ben's name does not count as ben's share.
        forged = (exchange / "ann.submission").read_text().replace('"custodian":"ann"', '"custodian":"ben"')
        (exchange / "forged.submission").write_text(forged)
        time.sleep(1.5)
        assert restore.poll() is None  # one share opens nothing
        _submit(tmp_path, request, "cat", shares / "cat.share", exchange / "cat.submission")
        out, err = restore.communicate(timeout=120)
    finally:
        if restore.poll() is None:
            restore.kill()
            restore.communicate()
    assert 0 == restore.returncode, err
    assert "refused junk.submission" in err
    assert "refused forged.submission: the submission of ben is not signed" in err
    assert "opened with the shares of ann, cat" in out
    assert not request.exists()
    assert not (into / "keys" / "root.key").exists()
    assert 'root = "custody"' in (into / "broker.toml").read_text()
    with LogReader.open(into / "data" / "audit.db", ORIGIN) as log:
        restores = [e for _, e in log.events() if e.type == "broker.restore"]
    assert ["ann", "cat"] == restores[0].details["custody"]["custodians"]
    (into / "jwks.json").write_bytes((base / "jwks.json").read_bytes())
    with serve_broker(into) as url:
        with BrokerClient(url, broker.tokens["acme-wl"]) as client, pytest.raises(SealedError):
            client.attest(SampleAttester())
        _unseal(url, operator, tmp_path, shares, ("ben", "cat"))
        assert expected == _release(url, broker.tokens["acme-wl"])
