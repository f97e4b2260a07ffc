"""A served teacher (`teacher.url` in a recipe): the source of token_kd's targets, and, when the
recipe gives no `teacher.path`, of the teacher's tokenizer and its top-1 for evaluation.

The student's batches are sent to `distill serve-teacher` one example per row (so packed rows
keep their isolation), and the teacher's top-k log-probs and exact tail mass come back for the
counted positions, in the same layout as the offline cache (`cache.py`): token_kd uses either.

Without `teacher.path` nothing of the teacher is loaded here: the tokenizer comes from the server
(GET /v1/tokenizer: data files only, written to a temporary folder and read by the transformers
tokenizer loaders; `teacher.tokenizer` may name a local one instead), the teacher's identity is
the fingerprint the server reported when the run connected (replies from another model are
refused), and the students' agreement with the teacher is measured against its served top-1.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from distill.errors import ConfigError
from distill.families.llm.data import IGNORE
from distill.serve import RemoteTeacher

NOT_EVALUATED = "teacher served: not evaluated locally"


@torch.no_grad()
def head_topk_logprobs(teacher, input_ids: Tensor, attention_mask: Tensor | None, k: int, temperature: float = 1.0,
                       with_tail: bool = False, with_tokens: bool = False, vocab: int | None = None):
    """`distill.serve.topk_logprobs` for a transformers causal LM (what `distill serve-teacher`
    answers with): its final hidden states, then the output layer (and the model's output transform)
    1024 positions at a time, so that one (1024, V) block of log-probs exists, not the batch's
    (B, T, V) logits; `with_tokens` adds the next input tokens' log-probs (temperature 1), from the
    same hidden states; with `vocab`, all over the first `vocab` output rows."""
    from distill.families.llm.models import body_of, output_head
    from distill.losses.lm import head_topk
    from distill.teacher import CachedOutputs

    module = teacher.module
    if module.training:  # as Teacher.__call__ does
        module.eval()
    w, b, f = output_head(module)
    h = body_of(module)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, D)
    B, T = input_ids.shape
    ids, lps, rest = head_topk(h.reshape(B * T, -1).to(w.device), w, b, f, k=k, temperature=temperature,
                               tail_floor=-1.0e4, vocab=vocab)
    out = CachedOutputs(ids.view(B, T, -1).to(input_ids.device), lps.view(B, T, -1).to(input_ids.device))
    if not with_tail:
        return out
    if not with_tokens:
        return out, rest.view(B, T).to(input_ids.device)
    from distill.losses.lm import hidden_token_logprobs
    from distill.serve import next_token_ids

    nxt = next_token_ids(input_ids).reshape(-1).to(w.device)
    tok = hidden_token_logprobs(h.reshape(B * T, -1).to(w.device), w, nxt, bias=b, vocab=vocab,
                                logit_map=f).view(B, T)
    tok[:, -1] = 0.0
    return out, rest.view(B, T).to(input_ids.device), tok.to(input_ids.device)


def _sentencepiece_tokenizer(model_file: str | Path, what: str):
    """A SentencePiece model loaded as the converter (`distill convert llama2c`) saves it."""
    from distill.families.llm.convert import save_sentencepiece_tokenizer
    from distill.families.llm.models import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        try:
            save_sentencepiece_tokenizer(model_file, tmp)
        except Exception as e:
            raise ConfigError(f"{what}: cannot read the SentencePiece model {str(model_file)!r}: {e}") from None
        return load_tokenizer(tmp, what)


class ServedTeacher:
    """The run's connection to a served teacher: its fingerprint, vocabulary size and tokenizer."""

    def __init__(self, url: str, timeout: float = 120.0):
        self.url = url
        self.remote = RemoteTeacher(url, timeout=timeout)

    @property
    def fingerprint(self) -> str:
        return self.remote.fingerprint()

    @property
    def vocab_size(self) -> int:
        return int(self.remote.info["vocab_size"])

    def tokenizer(self, local: str | None = None):
        """The served tokenizer, or `local` (a tokenizer folder, hub id or SentencePiece .model) if given."""
        from distill.families.llm.models import load_tokenizer

        if local is not None:
            tok = _sentencepiece_tokenizer(local, "teacher.tokenizer") if Path(local).suffix == ".model" \
                else load_tokenizer(local, "teacher.tokenizer")
            if self.vocab_size and len(tok) > self.vocab_size:
                raise ConfigError(f"teacher.tokenizer: {local!r} has {len(tok)} tokens, more than the served model's "
                                  f"vocabulary ({self.vocab_size}); it is not the served teacher's tokenizer.")
            return tok
        if not self.remote.info.get("tokenizer"):
            raise ConfigError(f"teacher.url: the served teacher at {self.url} offers no tokenizer (its model folder "
                              "holds no tokenizer files); give teacher.tokenizer (a tokenizer folder) or teacher.path.")
        kind, files = self.remote.tokenizer_files()
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            if kind == "sentencepiece":
                return _sentencepiece_tokenizer(Path(tmp) / "tokenizer.model", "teacher.url (served tokenizer)")
            return load_tokenizer(tmp, "teacher.url (served tokenizer)")

    def targets(self, k: int, temperature: float, pad_id: int = 0) -> ServedTargets:
        return ServedTargets(self.url, k, temperature, pad_id=pad_id, remote=self.remote)

    def top1(self, pad_id: int = 0) -> Callable[[dict[str, Tensor]], Tensor]:
        """batch -> the served teacher's most likely next token at each counted position (n,), in the
        order of `batch["labels"][labels != IGNORE]` (for `lm_metrics`' teacher agreement)."""
        targets = self.targets(1, 1.0, pad_id)

        def top1(batch: dict[str, Tensor]) -> Tensor:
            return targets.lookup(batch)[0][:, 0].to(batch["labels"].device)

        return top1


def padded_rows(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """(ids, attention mask) (R, longest): the sequences right-padded, one per row (a request)."""
    width = max(len(t) for t in seqs)
    rows = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(rows)
    for r, t in enumerate(seqs):
        rows[r, :len(t)] = torch.tensor(t)
        mask[r, :len(t)] = 1
    return rows, mask


class ServedTargets:
    """`lookup(batch)` -> (indices (n, k), log-probs (n, k), log tail (n,)) from a served teacher."""

    def __init__(self, url: str, k: int, temperature: float, pad_id: int = 0, timeout: float = 120.0,
                 remote: RemoteTeacher | None = None):
        self.remote = remote if remote is not None else RemoteTeacher(url, timeout=timeout)
        self.k, self.temperature, self.pad_id = k, temperature, pad_id
        self.meta = {"vocab_size": int(self.remote.info["vocab_size"]), "fingerprint": self.remote.fingerprint()}

    def lookup(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        ids, labels, seg = batch["input_ids"].cpu(), batch["labels"].cpu(), batch["seg"].cpu()
        pieces: list[tuple[list[int], Tensor]] = []  # (tokens of one example, its counted local positions)
        for b in range(ids.shape[0]):
            for j in sorted(seg[b].unique().tolist()):
                if j == 0:
                    continue
                pos = (seg[b] == j).nonzero().squeeze(-1)
                counted = (labels[b, pos] != IGNORE).nonzero().squeeze(-1)
                if counted.numel():
                    pieces.append((ids[b, pos].tolist(), counted))
        if not pieces:
            k = self.k
            return torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k), torch.zeros(0)
        rows, mask = padded_rows([t for t, _ in pieces], self.pad_id)
        out, tail = self.remote.topk(rows, mask, k=self.k, temperature=self.temperature, with_tail=True)
        idx = torch.cat([out.indices[r, c] for r, (_, c) in enumerate(pieces)])
        lp = torch.cat([out.logprobs[r, c] for r, (_, c) in enumerate(pieces)])
        lt = torch.cat([tail[r, c] for r, (_, c) in enumerate(pieces)])
        return idx, lp, lt
