"""Hybrid cross-tokenizer loss: an exact divergence on the tokens both vocabularies share, ULD on
the rest (in the spirit of Boizard et al. 2024 and of the token-mapping methods it is compared to).

Tokens are shared when they spell the same non-empty bytes (special tokens: the same role or the
same text). At each aligned chunk start, with p the teacher and q the student:
    D_shared = sum over shared k of the chosen divergence's terms on (p_k, q_k)  (`divergences`),
    D_rest   = sorted Wasserstein-1 between p and q restricted to their unshared tokens.
With identical vocabularies D_rest is 0 and the loss is exactly the chosen divergence. Plus CE.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from typing_extensions import Annotated

from distill.families.llm.cross_tokenizer.base import CrossTokenizerMethod
from distill.families.llm.cross_tokenizer.uld import sorted_wasserstein
from distill.losses.divergences import Kind, divergence_from_logprobs
from distill.registry import register_method


def shared_vocabulary(t_tok, s_tok, t_table, s_table) -> tuple[list[int], list[int]]:
    """(teacher ids, student ids) of the tokens both vocabularies have."""
    def keys(tok, table):
        out = {}
        names = tok.convert_ids_to_tokens(list(range(len(table))))
        roles = {tok.bos_token_id: "<<bos>>", tok.eos_token_id: "<<eos>>", tok.pad_token_id: "<<pad>>"}
        for i, b in enumerate(table):
            k = roles.get(i) or (b if b else f"<<special:{names[i]}>>")
            out.setdefault(k, i)
        return out

    kt, ks = keys(t_tok, t_table), keys(s_tok, s_table)
    common = [k for k in kt if k in ks]
    return [kt[k] for k in common], [ks[k] for k in common]


def hybrid_divergence(lp_student: torch.Tensor, lp_teacher: torch.Tensor, s_shared: torch.Tensor,
                      t_shared: torch.Tensor, kind: Kind = "forward_kl") -> torch.Tensor:
    """lp_*: (N, V_*) log-probs; *_shared (K,) matching ids -> (N,) exact-on-shared + ULD-on-rest."""
    exact = divergence_from_logprobs(lp_student[:, s_shared], lp_teacher[:, t_shared], kind)
    s_rest = torch.ones(lp_student.shape[-1], dtype=torch.bool, device=lp_student.device)
    t_rest = torch.ones(lp_teacher.shape[-1], dtype=torch.bool, device=lp_teacher.device)
    s_rest[s_shared] = False
    t_rest[t_shared] = False
    if not bool(s_rest.any()) and not bool(t_rest.any()):
        return exact
    return exact + sorted_wasserstein(lp_student[:, s_rest].exp(), lp_teacher[:, t_rest].exp())


@register_method("hybrid", family="llm", description="cross-tokenizer: exact divergence on shared tokens, ULD on the rest + CE",
                 injected=("student", "teacher"))
class Hybrid(CrossTokenizerMethod):
    def __init__(self, student, teacher, divergence: Kind = "forward_kl", temperature: Annotated[float, Field(gt=0)] = 1.0,
                 kd_weight: Annotated[float, Field(ge=0)] = 1.0, ce_weight: Annotated[float, Field(ge=0)] = 1.0,
                 chunk_size: Annotated[int, Field(ge=1)] = 1024):
        super().__init__(student, teacher, chunk_size=chunk_size)
        self.divergence, self.temperature = divergence, temperature
        self.weights = {"kd": kd_weight, "ce": ce_weight}

    def set_tokenizers(self, teacher_tok, student_tok) -> None:
        super().set_tokenizers(teacher_tok, student_tok)
        t, s = shared_vocabulary(teacher_tok, student_tok, self.t_table, self.s_table)
        self.t_shared, self.s_shared = torch.tensor(t, dtype=torch.long), torch.tensor(s, dtype=torch.long)

    def hparams(self):
        return {"divergence": self.divergence, "shared_tokens": int(self.t_shared.numel())}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        p = self.pair(batch)
        h_s = self.student_hidden(batch)
        h_t = self.teacher_hidden(p.teacher_batch)
        T = self.temperature
        s_shared, t_shared = self.s_shared.to(h_s.device), self.t_shared.to(h_s.device)

        def per_row(zs, zt):
            return hybrid_divergence(F.log_softmax(zs / T, -1), F.log_softmax(zt / T, -1), s_shared, t_shared,
                                     self.divergence)

        terms = {"kd": self.first_rows(per_row, h_s, h_t, p) * T**2 / batch["norm"]}
        if self.weights["ce"] > 0:
            terms["ce"] = self.ce_sum(h_s, batch["labels"]) / batch["norm"]
        return terms
