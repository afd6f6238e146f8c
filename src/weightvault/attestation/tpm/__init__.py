"""TPM 2.0 attestation: a pure quote-checking core, enrolment checks, the verifier and the attester.

tpm2-pytss is imported only here (lazily by callers): ``pip install 'weightvault[tpm]'``.
"""
