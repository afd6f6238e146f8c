"""The NVIDIA GPU attester of a workload: each GPU's signed report and certificate chain, through NVML.

Inside a confidential VM with its GPUs in CC mode, NVML asks each GPU for an SPDM
GET_MEASUREMENTS response over a 32-byte nonce
(``nvmlDeviceGetConfComputeGpuAttestationReport``) and returns it with the GPU's
attestation certificate chain (``nvmlDeviceGetConfComputeGpuCertificate``). NVML is
reached through NVIDIA's own bindings, ``nvidia-ml-py`` (``pip install 'weightvault[nvidia]'``).

Alone (``--attester nvidia-gpu``) the nonce is the session's ``report_data``; inside
composite evidence it is :func:`weightvault.attestation.composite.gpu_nonce`.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Mapping
from typing import Any

from weightvault.errors import ConfigError

__all__ = ["NvmlGpuAttester"]


def _nvml() -> Any:
    try:
        import pynvml
    except ImportError as exc:
        raise ConfigError("GPU attestation needs NVIDIA's NVML bindings: pip install 'weightvault[nvidia]'") from exc
    return pynvml


class NvmlGpuAttester:
    """Evidence for the ``nvidia-gpu`` verifier from every GPU of this machine (the Attester protocol)."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml

    @classmethod
    def open(cls) -> NvmlGpuAttester:
        """An attester for this machine's GPUs.

        Raises:
            ConfigError: no NVML bindings, no NVIDIA driver, no GPU, or confidential computing
                not enabled (NVML serves GPU evidence only in CC mode).
        """
        nvml = _nvml()
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise ConfigError(f"GPU attestation needs the NVIDIA driver (NVML: {exc})") from exc
        attester = cls(nvml)
        try:
            count = nvml.nvmlDeviceGetCount()
            state = nvml.nvmlSystemGetConfComputeState()
        except nvml.NVMLError as exc:
            attester.close()
            raise ConfigError(f"NVML cannot tell this machine's confidential-computing state ({exc})") from exc
        if count < 1:
            attester.close()
            raise ConfigError("GPU attestation: NVML sees no GPU")
        if state.ccFeature != nvml.NVML_CC_SYSTEM_FEATURE_ENABLED:
            attester.close()
            raise ConfigError(
                "GPU attestation needs confidential-computing mode on (nvidia-smi conf-compute -f says it is off); "
                "NVML serves no GPU evidence otherwise"
            )
        return attester

    def close(self) -> None:
        with contextlib.suppress(self.nvml.NVMLError):
            self.nvml.nvmlShutdown()

    def _cc_mode(self) -> str:
        state = self.nvml.nvmlSystemGetConfComputeState()
        if state.ccFeature != self.nvml.NVML_CC_SYSTEM_FEATURE_ENABLED:
            return "off"
        return "devtools" if state.devToolsMode else "on"

    def gpu_evidence(self, nonce: bytes) -> dict[str, Any]:
        """Every GPU's report over ``nonce`` (32 bytes), with its certificate chain.

        Raises:
            ConfigError: NVML refuses a report or a chain (the GPU is not ready for CC).
        """
        if len(nonce) != 32:
            raise ValueError("the SPDM nonce is 32 bytes")
        nvml = self.nvml
        mode = self._cc_mode()
        gpus = []
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                report = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, list(nonce))
                certs = nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
                gpus.append(
                    {
                        "report": base64.b64encode(
                            bytes(report.attestationReport[: report.attestationReportSize])
                        ).decode(),
                        "certificates": base64.b64encode(
                            bytes(certs.attestationCertChain[: certs.attestationCertChainSize])
                        ).decode(),
                        "cc_mode": mode,
                    }
                )
        except nvml.NVMLError as exc:
            raise ConfigError(f"NVML refused GPU evidence ({exc}); is every GPU in CC mode and ready?") from exc
        return {"type": "nvidia-gpu", "gpus": gpus}

    def evidence(self, report_data: bytes, challenge: Mapping[str, Any]) -> dict[str, Any]:
        return self.gpu_evidence(report_data)
