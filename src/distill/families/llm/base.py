"""The shape every language-model method shares.

A method is an nn.Module owning the student (so it is optimised and saved); the teacher is a
frozen `Teacher` held by reference. `forward(batch)` returns named loss terms, each a sum over
counted tokens divided by `batch["norm"]` (see `data.LMLoader`), so the engine's weighted sum is a
per-token mean over the accumulation window.

Class attributes the runner reads (never method names):
- `needs_teacher`: the teacher is passed in;
- `reads_teacher_cache`: the method can take its targets from the offline cache or a served
  teacher (`method.cache`) instead of the teacher; it is then built with `teacher=None` when the
  recipe has only `teacher.url`;
- `reads_aligned_cache`: (cross-tokenizer) the method can take the teacher's outputs per text from
  an aligned cache or a served teacher instead of the teacher: alm its token log-probs
  (`method.cache.chunk_logprobs`), uld (`aligned_cache_kind = "topk"`) its top-k and log tail at
  each chunk start (`method.cache.first_topk`);
- `generates_with_teacher`: the method generates text with the teacher (so it needs the model
  here, not a served teacher);
- `uses_prompts`: batches are one example per row with left-padded `prompt_ids` (generation);
- `cross_tokenizer`: the method aligns a student tokenizer that differs from the teacher's
  (`set_tokenizers(teacher_tok, student_tok)` is called before training);
- `prepare_examples(examples, tokenizer)`: rewrite the training set once before training
  (e.g. replace responses with the teacher's, for sequence-level KD).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distill.families.llm.data import IGNORE, Example, collate
from distill.families.llm.models import hidden_states, logit_map_of, output_head
from distill.losses.lm import hidden_cross_entropy, hidden_divergence
from distill.teacher import Teacher


class LMMethod(nn.Module):
    needs_teacher: bool = True
    uses_prompts: bool = False
    cross_tokenizer: bool = False  # works when the student's tokenizer differs from the teacher's

    def __init__(self, student: nn.Module, teacher: Teacher | None, *, chunk_size: int = 1024):
        super().__init__()
        if self.needs_teacher and teacher is None and not getattr(self, "reads_teacher_cache", False) \
                and not getattr(self, "reads_aligned_cache", False):
            raise ValueError(f"{type(self).__name__} needs a teacher")
        self.student = student
        self._teacher = teacher  # plain attribute: never a submodule, never optimised
        # refuse now, not mid-run, a model whose logits are not its head of its hidden states
        logit_map_of(student)
        if teacher is not None:
            logit_map_of(teacher.module)
        self.chunk_size = chunk_size
        self.weights: dict[str, float] = {}
        self.step = 0
        self.pad_id = 0
        self.eos_id: int | None = None

    @property
    def teacher(self) -> Teacher | None:
        return self._teacher

    def on_step(self, step: int, epoch: int) -> None:
        self.step = step

    def shared_vocab(self) -> int | None:
        """Rows both output layers have (vocabularies padded to different sizes)."""
        if self._teacher is None:
            return None
        return min(self.student.get_output_embeddings().weight.shape[0],
                   self._teacher.module.get_output_embeddings().weight.shape[0])

    def set_tokenizers(self, teacher_tok, student_tok) -> None:
        """Called once before training with both tokenizers (the same object when they agree)."""

    generation, teacher_source, seed = "hf", None, 0  # the runner sets these (teacher.generation)

    def teacher_generate(self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float) -> list[list[int]]:
        """The teacher's continuations of `prompts` (token lists, up to and including EOS): vLLM from
        the teacher's folder with `generation: vllm`, else transformers' generate on left-padded batches."""
        if self.generation == "vllm":
            from distill.families.llm.generation import vllm_generate

            return vllm_generate(self.teacher_source, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                                 eos_id=self.eos_id, vocab_limit=self.shared_vocab(), seed=self.seed)
        assert self._teacher is not None
        model = self._teacher.module
        device = next(model.parameters()).device
        P = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), P), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, p in enumerate(prompts):
            ids[b, P - len(p):], mask[b, P - len(p):] = torch.tensor(p), 1
        return sample(model, ids.to(device), mask.to(device), max_new_tokens=max_new_tokens, temperature=temperature,
                      eos_id=self.eos_id, pad_id=self.pad_id, vocab_limit=self.shared_vocab())

    def prepare_examples(self, examples: list[Example], tokenizer) -> list[Example]:
        return examples

    # ---------------------------------------------------------------- shared pieces
    def student_hidden(self, batch: dict[str, Any]) -> torch.Tensor:
        return hidden_states(self.student, batch)  # (B, T, D)

    def teacher_hidden(self, batch: dict[str, Any]) -> torch.Tensor:
        assert self._teacher is not None
        with torch.no_grad():  # a teacher placed by a device_map ends where its last layer is: back to the batch's
            return hidden_states(self._teacher.module, batch).to(batch["input_ids"].device)  # (B, T, Dt)

    def ce_sum(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        w, b, f = output_head(self.student)
        return hidden_cross_entropy(h, w, labels, bias=b, chunk_size=self.chunk_size, logit_map=f)

    def kd_sum(self, h_s: torch.Tensor, h_t: torch.Tensor, mask: torch.Tensor, kind: str, *, temperature: float = 1.0,
               beta: float = 0.5, alpha: float = 0.1, top_k: int | None = None) -> torch.Tensor:
        assert self._teacher is not None
        ws, bs, fs = output_head(self.student)
        wt, bt, ft = output_head(self._teacher.module)
        return hidden_divergence(h_s, ws, h_t, wt, kind, student_bias=bs, teacher_bias=bt,  # type: ignore[arg-type]
                                 temperature=temperature, mask=mask, beta=beta, alpha=alpha, top_k=top_k,
                                 chunk_size=self.chunk_size, student_logit_map=fs, teacher_logit_map=ft)

    def hparams(self) -> dict[str, Any]:
        return {}


@torch.no_grad()
def sample(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, max_new_tokens: int,
           temperature: float, eos_id: int | None, pad_id: int, vocab_limit: int | None = None) -> list[list[int]]:
    """Continuations (token lists, up to and including EOS) of left-padded prompts (B, P).
    temperature 0 = greedy; otherwise plain sampling from the full distribution. Ids at or above
    `vocab_limit` (padded rows the other model lacks) are never produced."""
    was_training = model.training
    model.eval()
    kw: dict[str, Any] = {"do_sample": temperature > 0, "max_new_tokens": max_new_tokens,
                          "pad_token_id": pad_id, "eos_token_id": eos_id}
    if temperature > 0:
        kw.update(temperature=temperature, top_k=0, top_p=1.0)
    n_out = model.get_output_embeddings().weight.shape[0]
    if vocab_limit is not None and vocab_limit < n_out:
        kw["suppress_tokens"] = list(range(vocab_limit, n_out))
    out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **kw)[:, prompt_ids.shape[1]:]
    model.train(was_training)
    conts = []
    for row in out.tolist():
        if eos_id is not None and eos_id in row:
            row = row[:row.index(eos_id) + 1]
        conts.append(row)
    return conts


def continuation_batch(prompts: list[list[int]], conts: list[list[int]], pad_id: int,
                       device: torch.device) -> dict[str, torch.Tensor]:
    """A one-example-per-row batch of prompt + continuation with targets on the continuation."""
    rows = [[Example(p + c, start=len(p), prompt_len=len(p))] for p, c in zip(prompts, conts)]
    b = collate(rows, pad_id, packed=False)
    b["norm"] = (b["labels"] != IGNORE).sum().clamp(min=1).float()
    return {k: v.to(device) for k, v in b.items()}


def prompts_of(batch: dict[str, torch.Tensor]) -> list[list[int]]:
    """Unpadded prompt token lists from a left-padded (B, P) prompt batch."""
    return [ids[m.bool()].tolist() for ids, m in zip(batch["prompt_ids"].cpu(), batch["prompt_mask"].cpu())]
