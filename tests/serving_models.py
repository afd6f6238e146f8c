"""Models for the serving tests and benchmarks: a small causal LM the tests build themselves.

``build_tiny_lm`` writes a Llama-architecture causal LM with random weights (seeded) and
MiniLM's WordPiece tokenizer, with a chat template, as a Hugging Face directory
(``model.safetensors``, ``config.json``, tokenizer files) ready to seal.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def readable_by_all(root: Path) -> None:
    """Let every user read a sealed model directory: a sandboxed server runs as nobody, and sealed weights
    are encrypted, so this exposes nothing (``weightvault sandbox`` refuses a model its user cannot read)."""
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def build_tiny_lm(dst: Path, tokenizer_dir: Path, *, seed: int = 0) -> Path:
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.cls_token_id,
        # [unused0]: a token a random model almost never picks, so generations run to max_tokens.
        eos_token_id=1,
        pad_token_id=tokenizer.pad_token_id,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()  # type: ignore[no-untyped-call]
    if dst.exists():
        shutil.rmtree(dst)
    model.save_pretrained(str(dst), safe_serialization=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(dst))
    for stray in ("generation_config.json",):
        (dst / stray).unlink(missing_ok=True)
    return dst
