"""Signed notes, checkpoints, cosignatures, policies and proof bundles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from weightvault.auditlog import (
    TYPE_COSIGNATURE,
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    ProofBundle,
    WitnessPolicy,
    parse_note,
    sign_checkpoint,
    verify_checkpoint,
)
from weightvault.auditlog.merkle import EMPTY_ROOT
from weightvault.crypto.signing import Ed25519Signer
from weightvault.errors import CheckpointError

GO = json.loads((Path(__file__).resolve().parents[2] / "vectors" / "signed_note" / "go-sumdb-note.json").read_text())
NOW = 1_800_000_000


def test_go_sumdb_note_interoperates() -> None:
    """Our signer reproduces Go's published signed note byte for byte, and our verifier accepts it."""
    signer = NoteSigner.from_skey(GO["signer_key"])
    assert GO["verifier_key"] == signer.verifier.vkey()
    note = parse_note(GO["signed_note"])
    assert GO["text"] == note.text
    assert GO["signed_note"] == note.to_text()
    verifier = NoteVerifier.from_vkey(GO["verifier_key"])
    assert verifier.matches(note.signatures[0])
    verifier.verify(note.text, note.signatures[0])
    with pytest.raises(CheckpointError):
        verifier.verify(note.text.replace("cryptography", "cryptographY"), note.signatures[0])


def test_cosignature_vkey_key_id() -> None:
    """A published type-0x04 vkey parses and its key id matches the cosignature derivation."""
    key = NoteVerifier.from_vkey(GO["cosignature_verifier_key"])
    assert TYPE_COSIGNATURE == key.sig_type
    assert GO["cosignature_verifier_key"] == key.vkey()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("body\n— k AAAA\n", "blank line"),
        ("body\n\n- k AAAAAAAA\n", "em dash"),
        ("body\n\n\u2013 k AAAAAAAA\n", "em dash"),
        ("body\n\n— k AAAAAAAA", "newline"),
        ("bo\x07dy\n\n— k AAAAAAAA\n", "control"),
        ("body\r\n\n— k AAAAAAAA\n", "control"),
        ("body\n\n— k AAAAAAAA=\n", "base64"),
        ("body\n\n— k+x AAAAAAAA\n", "key names"),
        ("body\n\n— k  AAAAAAAA\n", "signature"),
        ("body\n\n" + "— k AAAAAAAA\n" * 17, "more than 16"),
        ("body\n\n", "no signatures"),
    ],
)
def test_malformed_notes_are_rejected(text: str, message: str) -> None:
    """Missing blank line, wrong dash, missing newline, control characters, bad base64, too many signatures."""
    with pytest.raises(CheckpointError, match=message):
        parse_note(text)


def _log() -> NoteSigner:
    return NoteSigner("log.example/audit", Ed25519Signer(b"\x01" * 32))


def _witness(name: str, seed: int) -> NoteSigner:
    return NoteSigner(name, Ed25519Signer(bytes([seed]) * 32), TYPE_COSIGNATURE)


def test_checkpoint_body_round_trip_and_strictness() -> None:
    """Checkpoint bodies round-trip; leading zeros, bad roots and empty extension lines are rejected."""
    cp = Checkpoint("log.example/audit", 12, b"\x05" * 32, ("ext",))
    assert cp == Checkpoint.from_text(cp.to_text())
    for bad in (
        "o\n012\n" + "BQUF" * 10 + "BQU=\n",
        "o\n1\nnot-base64\n",
        "o\n1\n",
        f"o\n1\n{cp.to_text().split(chr(10))[2]}\n\n",
    ):
        with pytest.raises(CheckpointError):
            Checkpoint.from_text(bad)


def test_checkpoint_quorum_and_unknown_keys() -> None:
    """A checkpoint verifies with the log key and a 2-of-3 quorum; unknown signers are ignored."""
    log = _log()
    w = [_witness(f"w{i}.example", 10 + i) for i in range(3)]
    policy = WitnessPolicy.threshold([x.verifier for x in w], 2)
    note = sign_checkpoint(Checkpoint(log.name, 0, EMPTY_ROOT), log)
    with pytest.raises(CheckpointError, match="quorum"):
        verify_checkpoint(note, log.verifier, policy, now=NOW)
    stranger = _witness("stranger.example", 99)
    cosigned = note.with_signatures([w[0].sign(note.text, NOW), stranger.sign(note.text, NOW)])
    with pytest.raises(CheckpointError, match="quorum"):
        verify_checkpoint(cosigned, log.verifier, policy, now=NOW)
    cosigned = cosigned.with_signatures([w[2].sign(note.text, NOW)])
    verified = verify_checkpoint(cosigned.to_text(), log.verifier, policy, now=NOW)
    assert {"w0.example", "w2.example"} == set(verified.cosignatures)


def test_checkpoint_signed_by_unknown_key_is_rejected() -> None:
    """A checkpoint signed only by a key with the log's name but another key id is rejected."""
    log = _log()
    impostor = NoteSigner(log.name, Ed25519Signer(b"\x02" * 32))
    note = sign_checkpoint(Checkpoint(log.name, 0, EMPTY_ROOT), impostor)
    with pytest.raises(CheckpointError, match="not signed by the trusted log key"):
        verify_checkpoint(note, log.verifier, WitnessPolicy({}, {}, "none"), now=NOW)


def test_forged_signature_by_a_known_key_rejects_the_note() -> None:
    """A known key's signature that fails to verify rejects the whole note."""
    log = _log()
    note = sign_checkpoint(Checkpoint(log.name, 3, b"\x07" * 32), log)
    tampered = note.to_text().replace("\n3\n", "\n4\n")
    with pytest.raises(CheckpointError, match="does not verify"):
        verify_checkpoint(tampered, log.verifier, WitnessPolicy({}, {}, "none"), now=NOW)


def test_stale_cosignatures_do_not_count() -> None:
    """Cosignatures older than max_age (or from the future) do not meet the quorum."""
    log = _log()
    w = _witness("w.example", 7)
    policy = WitnessPolicy.threshold([w.verifier], 1)
    note = sign_checkpoint(Checkpoint(log.name, 0, EMPTY_ROOT), log)
    old = note.with_signatures([w.sign(note.text, NOW - 7200)])
    verify_checkpoint(old, log.verifier, policy, now=NOW)
    with pytest.raises(CheckpointError, match="quorum"):
        verify_checkpoint(old, log.verifier, policy, now=NOW, max_age_seconds=3600)
    future = note.with_signatures([w.sign(note.text, NOW + 3600)])
    with pytest.raises(CheckpointError, match="future"):
        verify_checkpoint(future, log.verifier, policy, now=NOW)


def test_policy_file_round_trip_and_groups() -> None:
    """A tlog-policy with nested groups parses and evaluates like its definition."""
    log = _log()
    x = [_witness(f"x{i}", 20 + i) for i in range(3)]
    y = [_witness(f"y{i}", 30 + i) for i in range(2)]
    text = "\n".join(
        [
            "# two organisations",
            f"log {log.verifier.vkey()}",
            *(f"witness X{i} {w.verifier.vkey()}" for i, w in enumerate(x)),
            *(f"witness Y{i} {w.verifier.vkey()}" for i, w in enumerate(y)),
            "group X 2 X0 X1 X2",
            "group Y any Y0 Y1",
            "group both all X Y",
            "quorum both",
        ]
    )
    policy = WitnessPolicy.parse(text)
    assert policy.satisfied({"X0", "X2", "Y1"})
    assert not policy.satisfied({"X0", "Y1"})
    assert not policy.satisfied({"X0", "X1", "X2"})
    assert WitnessPolicy.parse(policy.to_text()).satisfied({"X0", "X2", "Y1"})
    for bad in ("quorum nobody\n", "witness A bad\nquorum A\n", "group G 3 A\nquorum G\n", "log x\n"):
        with pytest.raises(CheckpointError):
            WitnessPolicy.parse(bad)


def test_proof_bundle_text_round_trip() -> None:
    """A proof bundle serialises to the c2sp.org/tlog-proof@v1 text and parses back."""
    log = _log()
    note = sign_checkpoint(Checkpoint(log.name, 2, b"\x01" * 32), log)
    bundle = ProofBundle(1, (b"\x02" * 32,), note, b"entry")
    text = bundle.to_text()
    assert text.startswith("c2sp.org/tlog-proof@v1\nextra ZW50cnk=\nindex 1\n")
    assert bundle == ProofBundle.from_text(text)
