"""Sequence-level KD (Kim & Rush 2016, "Sequence-Level Knowledge Distillation", sec. 3.2).

Before training, the teacher writes a continuation of every training prompt (greedy at
temperature 0, sampled otherwise); the student is then trained with next-token CE on the
teacher's sequences (targets = the teacher's continuation), optionally plus token-level KD.
"""
from __future__ import annotations

import torch
from pydantic import Field
from typing_extensions import Annotated

from distill.families.llm.base import LMMethod
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
        out = []
        step = len(examples) if self.generation == "vllm" else self.gen_batch  # vLLM schedules its own batches
        for i in range(0, len(examples), max(step, 1)):
            group = examples[i:i + step]
            prompts = [e.ids[:e.prompt_len] for e in group]
            conts = self.teacher_generate(prompts, max_new_tokens=self.max_new_tokens, temperature=self.temperature)
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
