"""vLLM's ``weightvault`` load format: sealed model directories, keys by attestation, no plaintext on disk.

A vLLM plugin (entry point ``vllm.general_plugins``, so vLLM loads it in every process it
starts) registers the load format through vLLM's model-loader extension API::

    vllm serve ./llama.sealed --load-format weightvault \\
        --model-loader-extra-config '{"broker": "https://broker:8443", "token": "@/run/wv.token"}'

vLLM reads ``config.json`` and the tokenizer, which sealing carries in the clear, and builds
the model; this loader then attests to the broker (``attester``: ``sample``, ``tpm`` with
``tcti`` and ``device_id``, or ``snp`` in an SEV-SNP guest, with ``endorsement`` when the
host supplies no VCEK), obtains the model's key exactly as ``weightvault load`` does,
and streams tensors, one sealed file at a time, verified and decrypted in memory, into
the model's ``load_weights``. Every parameter must be loaded, or the load fails and nothing
is served. With ``identity`` (a key file: KEK, HPKE private key or raw file key) no broker
is asked, for tests and air-gapped use. On a CUDA device, ChaCha20-Poly1305 files are
decrypted by the device kernels, straight into device memory.

Options (``--model-loader-extra-config``): ``broker`` (default ``$WEIGHTVAULT_BROKER``),
``token`` (``@FILE``, a file only its owner reads; default ``$WEIGHTVAULT_TOKEN``), ``ca``,
``attester``, ``tcti``, ``device_id``, ``endorsement``, ``kem`` (``mlkem768-x25519`` or ``x25519``),
``identity``. A token itself is refused there: vLLM logs its arguments, the loader's
configuration included.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from weightvault.errors import ConfigError

__all__ = ["LOAD_FORMAT", "LoaderOptions", "register", "sealed_weights"]

LOAD_FORMAT: Final = "weightvault"


@dataclass(frozen=True, slots=True)
class LoaderOptions:
    """What ``--model-loader-extra-config`` may say (see the module docstring)."""

    broker: str | None = None
    token: str | None = None
    ca: str | None = None
    attester: str = "sample"
    tcti: str | None = None
    device_id: str | None = None
    endorsement: str | None = None
    kem: str = "mlkem768-x25519"
    identity: str | None = None

    @classmethod
    def parse(cls, extra: Mapping[str, Any] | None) -> LoaderOptions:
        """Raises ConfigError on an unknown option or a value that is not a string."""
        extra = dict(extra or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(extra) - known)
        if unknown:
            raise ConfigError(f"unknown weightvault loader option(s) {unknown}; known: {sorted(known)}")
        if not all(isinstance(v, str) for v in extra.values()):
            raise ConfigError("weightvault loader options are strings")
        token = extra.get("token")
        if token is not None and not token.startswith("@"):
            raise ConfigError(
                "the weightvault loader takes its token as @FILE or $WEIGHTVAULT_TOKEN, never itself: "
                "vLLM logs its arguments"
            )
        return cls(**extra)


def _keys(options: LoaderOptions, stack: ExitStack) -> Any:
    """The key source the options name; what must be wiped or closed is pushed on ``stack``."""
    if options.identity is not None:
        from weightvault.format.keys import FileKey
        from weightvault.format.recipients import HPKERecipient
        from weightvault.sealing import read_key_file

        key = read_key_file(Path(options.identity))
        if isinstance(key, HPKERecipient):
            raise ConfigError(f"{options.identity} is a public key: the loader needs the private one")
        if isinstance(key, FileKey):
            stack.callback(key.wipe)
            return key
        return [key]
    from weightvault.client.broker import BrokerClient, BrokerIdentity
    from weightvault.client.workload import BROKER_ENV, open_attester, read_token
    from weightvault.crypto.keywrap import HPKEKem

    url = options.broker or os.environ.get(BROKER_ENV)
    if not url:
        raise ConfigError(f"the weightvault loader needs a broker (option 'broker' or ${BROKER_ENV}) or an identity")
    client = stack.enter_context(BrokerClient(url, read_token(options.token), verify=options.ca or True))
    endorsement = Path(options.endorsement) if options.endorsement else None
    attester = open_attester(options.attester, options.tcti, options.device_id, (), endorsement)
    close = getattr(attester, "close", None)
    if close is not None:
        stack.callback(close)
    identity = BrokerIdentity(client, attester, kem=HPKEKem(options.kem), device_id=options.device_id)
    stack.callback(identity.wipe)
    return [identity]


def sealed_weights(location: str | Path, keys: Any, device: Any = "cpu") -> Iterator[tuple[str, Any]]:
    """(name, tensor) of every weight of a sealed model directory, one sealed file at a time: each
    file is verified whole before any of its tensors is handed out.

    First, before any weight: the configuration and tokenizer files, which vLLM read from the
    directory itself, must be the ones the authenticated manifest lists, and (locally) the
    directory must hold nothing else, such as an added chat template.
    """
    from weightvault.loaders import torch as wv_torch
    from weightvault.sealing.model_dir import SealedModel

    model = SealedModel.open(location, keys)
    model.check_public_files()
    for entry in model.weight_entries():
        with model.open_sealed(entry) as opened:
            tensors = wv_torch.load_opened(opened, device)
        yield from tensors.items()
        del tensors


def register() -> None:
    """The vLLM plugin: registers the ``weightvault`` load format (vLLM calls it in each process)."""
    from vllm.logger import init_logger
    from vllm.model_executor.model_loader import register_model_loader
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader

    logger = init_logger("vllm.weightvault")

    class WeightvaultModelLoader(BaseModelLoader):  # type: ignore[misc]
        """Loads a sealed model directory (see :mod:`weightvault.serving.vllm`)."""

        def download_model(self, model_config: Any) -> None:
            return None  # a local directory or a URL: ranges are fetched as the weights load

        def load_weights(self, model: Any, model_config: Any) -> None:
            options = LoaderOptions.parse(self.load_config.model_loader_extra_config)
            wanted = {name for name, _ in model.named_parameters()}
            device = next(iter(model.parameters())).device
            started = time.perf_counter()
            with ExitStack() as stack:
                keys = _keys(options, stack)
                loaded = model.load_weights(sealed_weights(model_config.model, keys, device))
            # The same words as vLLM's own loader, so that both are timed alike (bench/vllm_load.py).
            seconds = time.perf_counter() - started
            logger.info("Loading weights took %.2f seconds (weightvault: sealed, verified)", seconds)
            if loaded is not None and model_config.quantization is None:
                missing = sorted(wanted - set(loaded))
                if missing:  # a model with uninitialised weights is never served
                    shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
                    raise ConfigError(f"the sealed model lacks {len(missing)} weight(s) the model needs: {shown}")

    register_model_loader(LOAD_FORMAT)(WeightvaultModelLoader)
