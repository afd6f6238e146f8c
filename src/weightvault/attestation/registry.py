"""The verifier registry: explicit ids, loaded only when the configuration allows them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from weightvault.attestation.interfaces import Verifier
from weightvault.errors import ConfigError

__all__ = ["KNOWN_VERIFIERS", "VerifierRegistry"]

#: Every verifier id weightvault ships; a configuration naming anything else is an error.
KNOWN_VERIFIERS: Final = frozenset({"tpm", "sev-snp", "tdx", "attestation-token", "insecure-sample"})


class VerifierRegistry:
    """The allowlisted verifiers of one broker."""

    def __init__(self, verifiers: Mapping[str, Verifier]) -> None:
        self._verifiers = dict(verifiers)

    @classmethod
    def build(
        cls,
        allow: Sequence[str],
        factories: Mapping[str, Callable[[], Verifier]],
        *,
        insecure_sample_enabled: bool = False,
    ) -> VerifierRegistry:
        """Instantiate the allowlisted verifiers.

        Raises:
            ConfigError: an unknown id, a missing factory, or insecure-sample
                allowlisted without being enabled explicitly.
        """
        loaded: dict[str, Verifier] = {}
        for vid in allow:
            if vid not in KNOWN_VERIFIERS:
                raise ConfigError(f"unknown verifier {vid!r}")
            if vid == "insecure-sample" and not insecure_sample_enabled:
                raise ConfigError("insecure-sample is for tests only; set insecure_sample_enabled = true to load it")
            factory = factories.get(vid)
            if factory is None:
                raise ConfigError(f"verifier {vid!r} is allowlisted but not configured")
            loaded[vid] = factory()
        return cls(loaded)

    def get(self, vid: Any) -> Verifier | None:
        return self._verifiers.get(vid) if isinstance(vid, str) else None

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(self._verifiers)
