"""A static student built from the teacher's vocabulary, the model2vec way (Tulkens & van Dongen
2024): every token id of the teacher's tokenizer goes through the teacher on its own (with the
special tokens the tokenizer adds, e.g. `[CLS] token [SEP]`) and the pooled output is that token's
vector; the table is centred and reduced with PCA; each row is scaled by a SIF weight a / (a + p(t))
(Arora et al. 2017), where p(t) is the token's probability: from a Zipf law over the vocabulary's
own order (model2vec's default, since BPE/WordPiece vocabularies are roughly frequency-ordered)
or from token counts of the training text. The table is then trained on text against the teacher
(`embedding_kd`; tokenlearn-style), which is where the student moves past model2vec.

Differences from model2vec, on purpose: the vocabulary is the teacher tokenizer's own, unpruned
(model2vec drops never-used tokens such as `[unused12]`; they cost a row each here and change
nothing else, since the Zipf ranks skip them too), and the pooled vector is the teacher's own
sentence pooling and Dense modules (mean pooling for mean-pooled teachers, as model2vec does).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from distill.errors import ConfigError
from distill.families.encoder.pooling import pool

UNUSED = re.compile(r"^(\[unused\d+\]|<unused\d+>|<extra_id_\d+>|<\|reserved_special_token_\d+\|>)$")


def content_ids(tok, vocab_size: int) -> list[int]:
    """Token ids that text can produce, in id order: not special tokens, not reserved placeholders."""
    special = set(tok.all_special_ids)
    names = tok.convert_ids_to_tokens(list(range(vocab_size)))
    return [i for i, n in enumerate(names) if i not in special and not (n and UNUSED.match(n))]


def special_frame(tok) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text ([CLS] / [SEP], <s> / </s>, or none)."""
    for text in ("hello", "a", "the", "x"):
        bare = tok(text, add_special_tokens=False)["input_ids"]
        full = tok(text, add_special_tokens=True)["input_ids"]
        for i in range(len(full) - len(bare) + 1):
            if bare and full[i:i + len(bare)] == bare:
                return list(full[:i]), list(full[i + len(bare):])
    return [], []


@torch.no_grad()
def token_vectors(encoder: nn.Module, tok, device: torch.device | str = "cpu", batch_size: int = 512,
                  progress: bool = True) -> torch.Tensor:
    """(V, D): each vocabulary id passed through `encoder` (a SentenceEncoder) alone, framed by the
    tokenizer's special tokens, pooled and projected as the encoder does (before normalisation)."""
    from distill.utils import ProgressBar

    from distill.families.encoder.data import collate

    v = int(encoder.config.vocab_size)
    prefix, suffix = special_frame(tok)
    rows = [[*prefix, i, *suffix] for i in range(v)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    was = encoder.training
    encoder.eval()
    out = []
    with ProgressBar(progress, "teacher vocabulary", v) as bar:
        for s in range(0, v, batch_size):
            chunk = rows[s:s + batch_size]
            b = collate(chunk, pad)
            ids, mask = b["input_ids"].to(device), b["attention_mask"].to(device)
            h = encoder.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
            e = pool(h, mask, encoder.pooling)
            for d in encoder.dense:
                e = d(e)
            out.append(e.float().cpu())
            bar.update(s + len(chunk))
    encoder.train(was)
    return torch.cat(out)


def pca(table: torch.Tensor, dim: int, fit_rows: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(reduced (V, dim), basis (D, dim), mean (D,)): principal directions of the rows `fit_rows`
    (default all), every row centred on their mean and projected. Each direction's sign is fixed
    so that its largest coordinate is positive (deterministic across machines)."""
    x = table.double()
    fit = x[list(fit_rows)] if fit_rows is not None else x
    mean = fit.mean(0)
    c = fit - mean
    evals, evecs = torch.linalg.eigh(c.t() @ c / max(1, c.shape[0] - 1))
    basis = evecs[:, evals.argsort(descending=True)[:dim]]
    flip = basis.gather(0, basis.abs().argmax(0, keepdim=True)).sign()
    basis = basis * flip
    return ((x - mean) @ basis).float(), basis.float(), mean.float()


def sif_weights(prob: torch.Tensor, a: float) -> torch.Tensor:
    """a / (a + p) per token (Arora et al. 2017): frequent tokens count less in the sentence mean."""
    return a / (a + prob)


def zipf_probabilities(vocab_size: int, ranked: Sequence[int]) -> torch.Tensor:
    """p(t) from a Zipf law over the ids in `ranked` (most frequent first): p ~ 1 / (rank + 2), the
    form model2vec uses; ids not ranked get probability 0 (weight 1)."""
    p = torch.zeros(vocab_size, dtype=torch.float64)
    inv = 1.0 / torch.arange(2, len(ranked) + 2, dtype=torch.float64)
    p[torch.tensor(list(ranked), dtype=torch.long)] = inv / inv.sum()
    return p.float()


def count_probabilities(rows: Sequence[Sequence[int]], vocab_size: int, skip: Sequence[int] = ()) -> torch.Tensor:
    """p(t) from token counts in tokenised text (add-one smoothing), special tokens left out."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    flat = torch.tensor([i for r in rows for i in r], dtype=torch.long)
    counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))
    if len(skip):
        counts[torch.tensor(list(skip), dtype=torch.long)] = 0
    return ((counts + 1) / (counts.sum() + vocab_size)).float()


class VocabTable:
    """The teacher's token vectors (computed once: `token_vectors`) and what the static tables of a
    run are made from: `table(dim, weights, sif)` -> (the SIF-weighted PCA table (V, dim), scaled so
    that the text tokens' rows have mean norm 1, and the PCA basis (teacher width, dim)). `rows`
    (tokenised training text) gives the counts for weights=corpus."""

    def __init__(self, vectors: torch.Tensor, tok, rows: Sequence[Sequence[int]] = (), skip: Sequence[int] = ()):
        self.vectors = vectors
        self.ids = content_ids(tok, vectors.shape[0])
        self.rows, self.skip = rows, skip
        self._pca: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_teacher(cls, encoder: nn.Module, tok, rows: Sequence[Sequence[int]] = (), skip: Sequence[int] = (),
                     device: torch.device | str = "cpu", progress: bool = True) -> VocabTable:
        return cls(token_vectors(encoder, tok, device, progress=progress), tok, rows, skip)

    def table(self, dim: int, weights: str = "zipf", sif: float = 1.0e-4) -> tuple[torch.Tensor, torch.Tensor]:
        v, width = self.vectors.shape
        if dim > width:
            raise ConfigError(f"student.hidden_size: {dim} is wider than the teacher's token vectors ({width}); "
                              "init=vocab reduces them with PCA, so give at most that width.")
        if dim not in self._pca:
            reduced, basis, _ = pca(self.vectors, dim, self.ids)
            self._pca[dim] = (reduced, basis)
        reduced, basis = self._pca[dim]
        if weights == "zipf":
            reduced = reduced * sif_weights(zipf_probabilities(v, self.ids), sif)[:, None]
        elif weights == "corpus":
            if not self.rows:
                raise ValueError("student.token_weights: corpus needs the training text's token rows")
            reduced = reduced * sif_weights(count_probabilities(self.rows, v, self.skip), sif)[:, None]
        elif weights != "none":
            raise ValueError(f"student.token_weights: unknown {weights!r} (zipf, corpus, none)")
        # one scale for every teacher and vocabulary size (the sentence embedding's direction does not depend on
        # it): the text tokens' rows have mean norm 1, so one learning rate suits every table
        reduced = reduced / reduced[self.ids].norm(dim=1).mean().clamp(min=1e-12)
        return reduced.clone(), basis.clone()
