"""A sealed model in memory, ready to embed or generate: what ``weightvault serve`` runs.

The model is loaded through attestation-gated release (:class:`~weightvault.client.broker.BrokerIdentity`,
as ``weightvault load`` does): the keys stay in memory and are wiped once the weights
are decrypted. Two tasks:

- ``embed``: an encoder (all-MiniLM-L6-v2 and other sentence encoders): mean pooling
  over the attention mask, then L2 normalisation, as sentence-transformers does;
- ``generate``: a causal LM, token by token with its KV cache (greedy at temperature 0,
  else sampling with temperature and top-p, seeded when asked), so that a stream can
  stop at any token and nothing but chosen tokens (and, when configured, at most
  ``max_logprobs`` alternatives each) ever leaves the process. Never logits.

One model call at a time (a lock): a CPU is saturated by one call already.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from weightvault.errors import ConfigError, InvalidRequestError

try:
    import torch
    import transformers
except ImportError as exc:  # pragma: no cover - exercised only without transformers
    raise ConfigError("weightvault serve needs: pip install 'weightvault[transformers]'") from exc

__all__ = ["Generated", "ModelRuntime", "Step", "Task"]

Task = Literal["embed", "generate"]
_CAUSAL_SUFFIXES: Final = ("ForCausalLM", "LMHeadModel")


@dataclass(frozen=True, slots=True)
class Step:
    """One generated token: the text it adds, and (when asked) its logprob and the top alternatives."""

    text: str
    token: str
    logprob: float | None
    top: tuple[tuple[str, float], ...]


@dataclass(slots=True)
class Generated:
    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: str = "length"


def detect_task(config: Any) -> Task:
    names = getattr(config, "architectures", None) or []
    return "generate" if any(str(n).endswith(_CAUSAL_SUFFIXES) for n in names) else "embed"


class ModelRuntime:
    """A model, its tokenizer and their limits; thread-safe (one model call at a time)."""

    def __init__(self, model: Any, tokenizer: Any, task: Task, name: str, *, device: str = "cpu") -> None:
        self.model, self.tokenizer, self.task, self.name, self.device = model, tokenizer, task, name, device
        self.lock = threading.Lock()
        config = model.config
        self.max_positions = int(
            getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 0) or 2048
        )
        self.bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        self.parameters = sum(p.numel() for p in model.parameters())
        self.eos = {int(t) for t in _as_list(getattr(config, "eos_token_id", None))}
        if tokenizer.eos_token_id is not None:
            self.eos.add(int(tokenizer.eos_token_id))
        self.bos = getattr(config, "bos_token_id", None)
        # transformers 5 renamed the KV cache argument (past_key_values -> cache); accept either.
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @classmethod
    def load(
        cls, path: Path, keys: Sequence[Any], *, task: Task | None = None, name: str, device: str = "cpu"
    ) -> ModelRuntime:
        """Load a sealed Hugging Face directory with ``keys`` (e.g. a BrokerIdentity)."""
        from weightvault.loaders import transformers as wv_transformers
        from weightvault.sealing.model_dir import SealedModel

        config = wv_transformers.load_config(SealedModel.open(path, keys))
        chosen: Task = task or detect_task(config)
        auto = transformers.AutoModelForCausalLM if chosen == "generate" else transformers.AutoModel
        model = wv_transformers.from_pretrained(auto, path, keys, device=None if device == "cpu" else device)
        tokenizer = wv_transformers.load_tokenizer(path, keys)
        return cls(model.eval(), tokenizer, chosen, name, device=device)

    # -- embeddings -------------------------------------------------------------------------------

    def embed(self, texts: Sequence[str], max_tokens: int) -> tuple[list[list[float]], int]:
        """Normalised mean-pooled embeddings of ``texts``, and the tokens they took.

        Raises:
            InvalidRequestError: an input longer than ``max_tokens`` tokens (never truncated silently).
        """
        limit = min(max_tokens, self.max_positions)
        batch = self.tokenizer(list(texts), padding=True, truncation=False, return_tensors="pt")
        lengths = batch["attention_mask"].sum(dim=1)
        if int(lengths.max()) > limit:
            raise InvalidRequestError(f"an input has {int(lengths.max())} tokens; the limit is {limit}")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with self.lock, torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
        return pooled.float().cpu().tolist(), int(lengths.sum())

    # -- generation -------------------------------------------------------------------------------

    def chat_prompt(self, messages: Sequence[tuple[str, str]]) -> str:
        """The prompt text of a conversation: the tokenizer's chat template, else a plain transcript."""
        if getattr(self.tokenizer, "chat_template", None):
            rendered = self.tokenizer.apply_chat_template(
                [{"role": r, "content": c} for r, c in messages], add_generation_prompt=True, tokenize=False
            )
            return str(rendered)
        return "".join(f"{role}: {content}\n" for role, content in messages) + "assistant:"

    def encode(self, prompt: str, max_new: int) -> list[int]:
        """The prompt's tokens, refused if they and ``max_new`` more do not fit the model's context."""
        # The prompt's own tokens, after the model's BOS if it has one: a tokenizer's other special
        # tokens (an encoder's [SEP] at the end) would end a causal LM's text before it starts.
        ids: list[int] = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if self.bos is not None and (not ids or ids[0] != self.bos):
            ids = [int(self.bos), *ids]
        if len(ids) <= (1 if self.bos is not None else 0):
            raise InvalidRequestError("the prompt is empty")
        if len(ids) + max_new > self.max_positions:
            raise InvalidRequestError(
                f"the prompt has {len(ids)} tokens; with max_tokens {max_new} that exceeds the model's "
                f"context of {self.max_positions}"
            )
        return ids

    def generate(
        self,
        ids: list[int],
        result: Generated,
        *,
        max_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        logprobs: int | None = None,
    ) -> Generator[Step, None, None]:
        """Yield tokens one at a time; ``result`` says at the end how many and why it stopped.

        Hold the iterator only while consuming it: it holds the model's lock, released when
        it ends or is closed.
        """
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        with self.lock, torch.inference_mode():
            inputs = torch.tensor([ids], device=self.device)
            past = None
            produced: list[int] = []
            text = ""
            for _ in range(max_tokens):
                out = self.model(input_ids=inputs, use_cache=True, **{self._cache_arg: past})
                past = out[self._cache_arg]
                logits = out.logits[0, -1].float().cpu()
                del out
                token = _choose(logits, temperature, top_p, generator)
                if token in self.eos:
                    result.finish_reason = "stop"
                    return
                produced.append(token)
                result.completion_tokens = len(produced)
                full = self.tokenizer.decode(produced, skip_special_tokens=True)
                # A token may end inside a multi-byte character: hold its text until it completes.
                complete = not full.endswith("\ufffd") and full.startswith(text)
                delta = full[len(text) :] if complete else ""
                hit = _first_stop(full, stop)
                if hit is not None:
                    delta = full[len(text) : hit] if hit > len(text) else ""
                    if delta:
                        yield self._step(delta, token, logits, logprobs)
                    result.finish_reason = "stop"
                    return
                if complete:
                    text = full
                yield self._step(delta, token, logits, logprobs)
                inputs = torch.tensor([[token]], device=self.device)
            result.finish_reason = "length"

    def _step(self, delta: str, token: int, logits: torch.Tensor, logprobs: int | None) -> Step:
        if logprobs is None:
            return Step(delta, self.tokenizer.decode([token]), None, ())
        lp = torch.log_softmax(logits, dim=-1)
        top = torch.topk(lp, logprobs) if logprobs else None
        alternatives = (
            tuple((self.tokenizer.decode([int(i)]), float(v)) for v, i in zip(top.values, top.indices, strict=True))
            if top is not None
            else ()
        )
        return Step(delta, self.tokenizer.decode([token]), float(lp[token]), alternatives)


def _choose(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        ordered, index = torch.sort(probs, descending=True)
        keep = torch.cumsum(ordered, dim=-1) - ordered < top_p
        probs = torch.zeros_like(probs).scatter(0, index[keep], ordered[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def _first_stop(text: str, stop: Sequence[str]) -> int | None:
    found = [text.find(s) for s in stop if s and s in text]
    return min(found) if found else None


def _as_list(value: object) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
