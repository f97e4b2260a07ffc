"""Sequence-level KD (Kim & Rush 2016, "Sequence-Level Knowledge Distillation", sec. 3.2).

Before training, the teacher writes a continuation of every training prompt (greedy at
temperature 0, sampled otherwise); the student is then trained with next-token CE on the
teacher's sequences (targets = the teacher's continuation), optionally plus token-level KD.
"""
from __future__ import annotations

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.families.llm.base import LMMethod, sample
from distill.families.llm.data import IGNORE, Example
from distill.registry import register_method


@register_method("seq_kd", family="llm", description="sequence-level KD: CE on teacher-generated continuations (Kim & Rush 2016)",
                 injected=("student", "teacher"))
class SeqKD(LMMethod):
    generates_with_teacher = True  # the teacher writes the training continuations (needs it in this process)

    def __init__(self, student, teacher, temperature: Annotated[float, Field(ge=0)] = 0.0,
                 max_new_tokens: Annotated[int, Field(ge=1)] = 128, batch_size: Annotated[int, Field(ge=1)] = 64,
                 kd_weight: Annotated[float, Field(ge=0)] = 0.0, chunk_size: Annotated[int, Field(ge=1)] = 1024):
        super().__init__(student, teacher, chunk_size=chunk_size)
        self.temperature, self.max_new_tokens, self.gen_batch = temperature, max_new_tokens, batch_size
        self.weights = {"ce": 1.0, "kd": kd_weight}

    def hparams(self):
        return {"temperature": self.temperature, "max_new_tokens": self.max_new_tokens}

    def prepare_examples(self, examples: list[Example], tokenizer) -> list[Example]:
        assert self._teacher is not None
        model = self._teacher.module
        device = next(model.parameters()).device
        out = []
        for i in range(0, len(examples), self.gen_batch):
            group = examples[i:i + self.gen_batch]
            prompts = [e.ids[:e.prompt_len] for e in group]
            P = max(len(p) for p in prompts)
            ids = torch.full((len(prompts), P), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for b, p in enumerate(prompts):
                ids[b, P - len(p):], mask[b, P - len(p):] = torch.tensor(p), 1
            conts = sample(model, ids.to(device), mask.to(device), max_new_tokens=self.max_new_tokens,
                           temperature=self.temperature, eos_id=self.eos_id, pad_id=self.pad_id,
                           vocab_limit=self.shared_vocab())
            for p, c in zip(prompts, conts):
                if c:
                    text_bytes = len(tokenizer.decode(c, skip_special_tokens=True).encode("utf-8"))
                    out.append(Example(p + c, start=len(p), prompt_len=len(p), n_bytes=text_bytes))
        return out

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h_s = self.student_hidden(batch)
        terms = {"ce": self.ce_sum(h_s, batch["labels"]) / batch["norm"]}
        if self.weights["kd"] > 0:
            mask = batch["labels"] != IGNORE
            terms["kd"] = self.kd_sum(h_s, self.teacher_hidden(batch), mask, "forward_kl") / batch["norm"]
        return terms
