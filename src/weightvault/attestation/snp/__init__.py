"""AMD SEV-SNP: attestation reports (:mod:`.report`), the ``sev-snp`` verifier (:mod:`.verifier`) and
the workload's attester (:mod:`.attester`). AMD's key hierarchy is in :mod:`weightvault.crypto.sev`."""
