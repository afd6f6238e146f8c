"""NVIDIA GPUs: the ``nvidia-gpu`` verifier (:mod:`.verifier`), SPDM reports checked against pinned NVIDIA roots
and signed reference integrity manifests (``pip install 'weightvault[nvidia]'``), and the NVML attester."""
