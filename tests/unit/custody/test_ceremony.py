"""Share sets and ceremonies (pure): commitments, KCV, signatures, and each attack on the state machine."""

from __future__ import annotations

import dataclasses
import os

import pytest

from weightvault.custody import shamir
from weightvault.custody.ceremony import (
    Ceremony,
    CeremonyTerms,
    cancel_message,
    prepare_submission,
    rekey_params,
)
from weightvault.custody.person import PersonKey
from weightvault.custody.shares import (
    ShareSet,
    check_consistent,
    deal,
    key_check_value,
    open_delivered,
    share_commitment,
)
from weightvault.errors import CeremonyError, ConfigError, ShareError

NOW = 1_800_000_000


@pytest.fixture(scope="module")
def people() -> list[PersonKey]:
    return [PersonKey.generate(name) for name in ("ann", "ben", "cat", "dan", "eve")]


@pytest.fixture
def dealt(people: list[PersonKey]) -> tuple[bytes, ShareSet, dict[str, bytes]]:
    root = os.urandom(32)
    share_set, delivered = deal(root, 3, [p.public for p in people])
    shares = {p.id: open_delivered(p, share_set.id, delivered[p.id]) for p in people}
    return root, share_set, shares


def _open(share_set: ShareSet, kind: str = "unseal", params: dict[str, object] | None = None) -> Ceremony:
    return Ceremony.open("broker-1", kind, share_set, params or {}, now=NOW, ttl=600)


def _submit(ceremony: Ceremony, key: PersonKey, share: bytes, now: int = NOW + 1) -> bool:
    sealed, signature = prepare_submission(key, ceremony.terms, share)
    return ceremony.submit(key.id, sealed, signature, now)


def test_unseal_with_threshold_shares(people: list[PersonKey], dealt: tuple[bytes, ShareSet, dict[str, bytes]]) -> None:
    root, share_set, shares = dealt
    assert share_set.kcv == key_check_value(root)
    ceremony = _open(share_set)
    assert not _submit(ceremony, people[0], shares["ann"])
    assert not _submit(ceremony, people[3], shares["dan"])
    assert _submit(ceremony, people[4], shares["eve"])
    assert root == ceremony.finish()
    assert "done" == ceremony.status


def test_threshold_minus_one_cannot_finish(
    people: list[PersonKey], dealt: tuple[bytes, ShareSet, dict[str, bytes]]
) -> None:
    _, share_set, shares = dealt
    ceremony = _open(share_set)
    _submit(ceremony, people[0], shares["ann"])
    _submit(ceremony, people[1], shares["ben"])
    with pytest.raises(CeremonyError, match="enough"):
        ceremony.finish()


def test_a_corrupted_share_is_refused_at_submission_and_honest_ones_still_finish(
    people: list[PersonKey], dealt: tuple[bytes, ShareSet, dict[str, bytes]]
) -> None:
    """The hashicorp/vault#2484 case: one altered byte is caught by the commitment, attributed to ben."""
    root, share_set, shares = dealt
    ceremony = _open(share_set)
    bad = bytearray(shares["ben"])
    bad[5] ^= 0x01
    with pytest.raises(ShareError, match="ben"):
        _submit(ceremony, people[1], bytes(bad))
    for person in (people[0], people[2], people[3]):
        _submit(ceremony, person, shares[person.id])
    assert root == ceremony.finish()


def test_shares_cannot_be_swapped_between_custodians(
    people: list[PersonKey], dealt: tuple[bytes, ShareSet, dict[str, bytes]]
) -> None:
    _, share_set, shares = dealt
    with pytest.raises(ShareError, match="commitment"):
        _submit(_open(share_set), people[0], shares["ben"])


def test_a_share_of_another_set_is_refused(
    people: list[PersonKey], dealt: tuple[bytes, ShareSet, dict[str, bytes]]
) -> None:
    root, share_set, _ = dealt
    other_set, other_delivered = deal(root, 3, [p.public for p in people])
    old_share = open_delivered(people[0], other_set.id, other_delivered["ann"])
    with pytest.raises(ShareError):
        _submit(_open(share_set), people[0], old_share)
    with pytest.raises(ShareError, match="not ann's share"):
        open_delivered(people[0], share_set.id, other_delivered["ann"])


def test_a_submission_replayed_to_another_ceremony_is_refused(
    people: list[PersonKey], dealt: tuple[bytes, ShareSet, dict[str, bytes]]
) -> None:
    _, share_set, shares = dealt
    first, second = _open(share_set), _open(share_set)
    sealed, signature = prepare_submission(people[0], first.terms, shares["ann"])
    with pytest.raises(ShareError, match="not signed"):
        second.submit("ann", sealed, signature, NOW + 1)


def test_forged_and_duplicate_submissions(
    people: list[PersonKey], dealt: tuple[bytes, ShareSet, dict[str, bytes]]
) -> None:
    _, share_set, shares = dealt
    ceremony = _open(share_set)
    mallory = PersonKey.generate("ann")  # same name, other key
    with pytest.raises(ShareError, match="not signed"):
        _submit(ceremony, mallory, shares["ann"])
    _submit(ceremony, people[0], shares["ann"])
    with pytest.raises(ShareError, match="already"):
        _submit(ceremony, people[0], shares["ann"])
    with pytest.raises(ShareError, match="not a custodian"):
        _submit(ceremony, PersonKey.generate("zed"), shares["ben"])


def test_expired_and_cancelled_ceremonies(
    people: list[PersonKey], dealt: tuple[bytes, ShareSet, dict[str, bytes]]
) -> None:
    _, share_set, shares = dealt
    ceremony = _open(share_set)
    with pytest.raises(CeremonyError, match="expired"):
        _submit(ceremony, people[0], shares["ann"], now=NOW + 600)
    hijacked = _open(share_set)
    _submit(hijacked, people[0], shares["ann"])
    with pytest.raises(CeremonyError, match="only a custodian"):
        hijacked.cancel("ann", PersonKey.generate("ann").sign(cancel_message(hijacked.id, "ann")), NOW + 2)
    with pytest.raises(CeremonyError, match="only a custodian"):
        hijacked.cancel("ann", people[0].sign(cancel_message("another-ceremony", "ann")), NOW + 2)
    hijacked.cancel("ben", people[1].sign(cancel_message(hijacked.id, "ben")), NOW + 2)
    with pytest.raises(CeremonyError, match="cancelled"):
        _submit(hijacked, people[2], shares["cat"])


def test_verify_all_needs_every_share_and_detects_an_inconsistent_dealer(
    people: list[PersonKey], dealt: tuple[bytes, ShareSet, dict[str, bytes]]
) -> None:
    _, share_set, shares = dealt
    ceremony = _open(share_set, "verify")
    for person in people[:-1]:
        assert not _submit(ceremony, person, shares[person.id])
    assert _submit(ceremony, people[-1], shares["eve"])
    assert ceremony.finish() is None
    # A dealer that hands out shares of two different polynomials, each with a valid commitment:
    a, b = shamir.split(os.urandom(32), 5, 3), shamir.split(os.urandom(32), 5, 3)
    with pytest.raises(ShareError, match="polynomial"):
        check_consistent(3, [*a[:4], b[4][:-1] + a[4][-1:]])
    check_consistent(3, a)


def test_a_wrong_reconstruction_is_caught_by_the_kcv(
    people: list[PersonKey], dealt: tuple[bytes, ShareSet, dict[str, bytes]]
) -> None:
    """If storage held forged commitments matching forged shares, the KCV still refuses the result."""
    _, share_set, _ = dealt
    fake_root = os.urandom(32)
    fake_shares = shamir.split(fake_root, 5, 3)
    forged = dataclasses.replace(
        share_set,
        custodians=tuple(
            dataclasses.replace(slot, commitment=share_commitment(share_set.id, slot.id, fake_shares[i]))
            for i, slot in enumerate(share_set.custodians)
        ),
    )
    ceremony = _open(forged)
    for i, person in enumerate(people[:3]):
        _submit(ceremony, person, fake_shares[i])
    with pytest.raises(ShareError, match="key-check value"):
        ceremony.finish()


def test_terms_are_bound_to_the_id(people: list[PersonKey], dealt: tuple[bytes, ShareSet, dict[str, bytes]]) -> None:
    """A broker that shows changed rekey parameters under an id cannot pass the client's check."""
    _, share_set, _ = dealt
    ceremony = _open(share_set, "rekey", rekey_params(2, [p.public for p in people[:3]]))
    doc = ceremony.terms.to_json()
    assert ceremony.id == CeremonyTerms.from_json(doc).id
    swapped = {**doc, "params": rekey_params(2, [PersonKey.generate("ann").public, people[1].public])}
    with pytest.raises(CeremonyError, match="does not match"):
        CeremonyTerms.from_json(swapped)


def test_rekey_parameters_are_checked() -> None:
    people = [PersonKey.generate(n) for n in ("a1", "b1")]
    with pytest.raises(ConfigError):
        deal(os.urandom(32), 3, [p.public for p in people])
    with pytest.raises(ConfigError, match="distinct"):
        deal(os.urandom(32), 2, [people[0].public, people[0].public])
