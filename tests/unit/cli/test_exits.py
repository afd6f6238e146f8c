"""The exit-code table: every error class of the tree has a code, and codes are unique per label."""

from __future__ import annotations

import inspect

from weightvault import errors as e
from weightvault.cli.exits import EXIT_CODES, exit_code_for


def test_every_error_class_has_its_own_code() -> None:
    classes = {c for _, c in inspect.getmembers(e, inspect.isclass) if issubclass(c, e.WeightVaultError)}
    assert classes == set(EXIT_CODES)
    codes = [code for code, _ in EXIT_CODES.values()]
    assert len(codes) == len(set(codes))


def test_the_most_specific_class_decides() -> None:
    assert (53, "audit log unavailable") == exit_code_for(e.AuditUnavailableError("x"))
    assert (34, "enrolment refused") == exit_code_for(e.EnrolmentError("x"))

    class Unlisted(e.ReleaseDeniedError):
        pass

    assert (23, "key release denied") == exit_code_for(Unlisted("x"))
