"""The verifier registry: explicit ids, loaded only when the configuration allows them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from weightvault.attestation.interfaces import Verifier
from weightvault.errors import ConfigError

__all__ = ["KNOWN_VERIFIERS", "VerifierRegistry"]

#: Every verifier id weightvault ships; a configuration naming anything else is an error.
KNOWN_VERIFIERS: Final = frozenset(
    {"tpm", "sev-snp", "tdx", "nvidia-gpu", "composite", "attestation-token", "insecure-sample"}
)


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

        ``composite`` needs no factory: it is built last, over the other allowlisted
        verifiers (:class:`~weightvault.attestation.composite.CompositeVerifier`).

        Raises:
            ConfigError: an unknown id, a missing factory, insecure-sample allowlisted
                without being enabled explicitly, or composite without nvidia-gpu and a
                CPU verifier.
        """
        loaded: dict[str, Verifier] = {}
        for vid in allow:
            if vid not in KNOWN_VERIFIERS:
                raise ConfigError(f"unknown verifier {vid!r}")
            if vid == "composite":
                continue
            if vid == "insecure-sample" and not insecure_sample_enabled:
                raise ConfigError("insecure-sample is for tests only; set insecure_sample_enabled = true to load it")
            factory = factories.get(vid)
            if factory is None:
                raise ConfigError(f"verifier {vid!r} is allowlisted but not configured")
            loaded[vid] = factory()
        if "composite" in allow:
            from weightvault.attestation.composite import CompositeVerifier

            loaded["composite"] = CompositeVerifier(loaded)
        return cls(loaded)

    def get(self, vid: Any) -> Verifier | None:
        return self._verifiers.get(vid) if isinstance(vid, str) else None

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(self._verifiers)
