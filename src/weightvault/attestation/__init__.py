"""Attestation: evidence verifiers (plugins with one contract) and release policies.

Verifiers turn evidence into normalised claims (:class:`AttestationResult`);
release policies (:mod:`.policy`) decide on those claims. Verifiers are loaded
only when allowlisted (:mod:`.registry`).
"""
