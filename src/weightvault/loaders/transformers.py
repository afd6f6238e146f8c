"""Loading a sealed Hugging Face model directory into transformers.

``from_pretrained(model_class, path, keys)`` authenticates the directory's
manifest, builds the configuration from the authenticated ``config.json``
(public or sealed), decrypts every weight shard into memory, and hands the state
dict to ``model_class.from_pretrained`` so transformers applies its usual key
mapping, tied weights and dtype handling. The outputs are identical to the plain
model's. Nothing is decrypted to disk.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Final

from weightvault.encoding import parse_json
from weightvault.errors import ConfigError, ManifestError

# Before weightvault.loaders.torch, whose own hint names only the torch extra.
try:
    import torch
    import transformers
except ImportError as exc:  # pragma: no cover - exercised only without transformers (scripts/wheel-check.sh)
    raise ConfigError("weightvault.loaders.transformers needs: pip install 'weightvault[transformers]'") from exc

from weightvault.loaders.torch import load_opened
from weightvault.sealing.model_dir import SealedModel
from weightvault.sealing.reader import KeySource

__all__ = ["from_pretrained", "load_config", "load_tokenizer"]

_TOKENIZER_FILES: Final = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "spiece.model",
    "config.json",
    # transformers 4.5x and later save the chat template beside the tokenizer, not inside it.
    "chat_template.jinja",
    "chat_template.json",
)
#: A folder of named chat templates (transformers' ``additional_chat_templates``).
_TOKENIZER_FOLDERS: Final = ("additional_chat_templates/",)


def load_config(model: SealedModel) -> Any:
    """The model's configuration, from its authenticated ``config.json``."""
    raw = model.read_bytes("config.json")
    doc = parse_json(raw, "config.json is not valid JSON", ManifestError)
    if not isinstance(doc, dict) or "model_type" not in doc:
        raise ManifestError("config.json has no model_type")
    return transformers.AutoConfig.for_model(**doc)


def _concrete_class(model_class: Any, config: Any) -> Any:
    """Resolve an Auto* class to the concrete class for ``config`` without allocating weights."""
    if model_class.__name__.startswith("Auto"):
        with torch.device("meta"):
            return type(model_class.from_config(config))
    return model_class


def from_pretrained(
    model_class: Any,
    path: str | Path,
    keys: KeySource,
    *,
    device: str | torch.device | None = None,
    kernels: bool | None = None,
    workers: int | None = None,
    **kwargs: Any,
) -> Any:
    """Load a sealed model directory into ``model_class`` (a transformers class, Auto* included).

    With ``device="cuda:0"`` the weights of a ChaCha20-Poly1305 model are decrypted on
    the GPU (no plaintext in host memory) and the model is placed there; ``kernels``
    forces the device kernels on or off (see :func:`weightvault.loaders.torch.load_opened`);
    on the CPU ``workers`` threads decrypt (default: one per usable core). Extra keyword
    arguments go to ``from_pretrained`` (``dtype``, ``device_map``, ...).

    Raises:
        ManifestError: the directory or its config fails authentication.
        FormatError: a weight shard fails authentication.
        KeyAccessError: ``keys`` do not open the model.
    """
    model = SealedModel.open(path, keys)
    config = load_config(model)
    state: dict[str, Any] = {}
    for entry in model.weight_entries():
        with model.open_sealed(entry) as opened:
            state.update(load_opened(opened, device or "cpu", kernels=kernels, workers=workers))
    if device is not None and torch.device(device).type != "cpu":
        kwargs.setdefault("device_map", {"": str(device)})
    cls = _concrete_class(model_class, config)
    loaded = cls.from_pretrained(None, config=config, state_dict=state, **kwargs)
    state.clear()
    return loaded


def load_tokenizer(path: str | Path, keys: KeySource, **kwargs: Any) -> Any:
    """Load the tokenizer of a sealed model directory.

    Tokenizer files are authenticated (and decrypted, when sealed) into a private
    temporary directory that is removed right after transformers has read them.
    """
    model = SealedModel.open(path, keys)
    with tempfile.TemporaryDirectory(prefix="weightvault-tok-") as tmp:
        os.chmod(tmp, 0o700)
        for entry in model.manifest.files:
            name = entry.logical_path  # checked by the manifest: relative, no "..", no empty part
            if name in _TOKENIZER_FILES or name.startswith(_TOKENIZER_FOLDERS):
                target = Path(tmp) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(model.read_bytes(name))
        return transformers.AutoTokenizer.from_pretrained(tmp, **kwargs)
