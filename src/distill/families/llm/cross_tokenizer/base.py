"""What every cross-tokenizer method shares: re-tokenising each student example for the teacher
and aligning the two (see `alignment`), batch by batch.

The runner trains on student-tokenised examples (possibly packed). For each example the student's
tokens are spelled out in bytes, the text is tokenised by the teacher (its own BOS; EOS when the
student's example ends with one), and the two are aligned into chunks. The teacher batch is packed
like the student's, so a row holds the same texts on both sides.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from distill.families.llm.base import LMMethod
from distill.errors import ConfigError
from distill.families.llm.cross_tokenizer.alignment import AlignmentError, Encoded, align, encode, token_bytes_table
from distill.families.llm.data import IGNORE, Example, collate, model_inputs
from distill.families.llm.models import output_head
from distill.losses.lm import head_logits

PROBES = ("Once upon a time, there was a little girl.", "  two  spaces\nand a new line")


def _trim_utf8(raw: bytes) -> tuple[int, int]:
    """(lead, tail) bytes to drop so that a window cut inside characters decodes: continuation bytes
    at the start, an incomplete sequence at the end."""
    lead = 0
    while lead < len(raw) and lead < 3 and (raw[lead] & 0xC0) == 0x80:
        lead += 1
    end = len(raw)
    for back in range(1, min(4, end - lead) + 1):
        c = raw[end - back]
        if (c & 0xC0) == 0x80:
            continue
        need = 2 if c >> 5 == 0b110 else 3 if c >> 4 == 0b1110 else 4 if c >> 3 == 0b11110 else 1
        if need > back:
            end -= back
        break
    return lead, len(raw) - end


@dataclass
class Paired:
    """A student batch's teacher counterpart and the chunks linking them.

    `*_pos` (N,): flat index (row * T + t) of the position predicting each chunked token, `*_tok` (N,)
    that token, `*_chunk` (N,) its chunk; `*_first` (C,): the position predicting each chunk's first
    token; `valid` (C,): every token of the chunk is a counted target on both sides."""
    teacher_batch: dict[str, torch.Tensor]
    s_pos: torch.Tensor
    s_tok: torch.Tensor
    s_chunk: torch.Tensor
    t_pos: torch.Tensor
    t_tok: torch.Tensor
    t_chunk: torch.Tensor
    s_first: torch.Tensor
    t_first: torch.Tensor
    valid: torch.Tensor

    @property
    def n_chunks(self) -> int:
        return int(self.valid.numel())


class CrossTokenizerMethod(LMMethod):
    cross_tokenizer = True

    def set_tokenizers(self, teacher_tok, student_tok) -> None:
        self.t_tok, self.s_tok = teacher_tok, student_tok
        self.t_table, self.s_table = token_bytes_table(teacher_tok), token_bytes_table(student_tok)
        self.t_vocab, self.s_vocab = len(teacher_tok), len(student_tok)
        for text in PROBES:  # refuse, before training, a pair that cannot be aligned by bytes
            try:
                align(encode(student_tok, text, self.s_table, what="student tokenizer"),
                      encode(teacher_tok, text, self.t_table, what="teacher tokenizer"))
            except AlignmentError as e:
                raise ConfigError(f"student.tokenizer / teacher.tokenizer: cannot align the two tokenizers: {e}") from None

    # ------------------------------------------------------------------ pairing
    def _student_side(self, ids: list[int], counted: list[bool]) -> tuple[str, Encoded, list[bool]] | None:
        pieces = [self.s_table[i] if i < len(self.s_table) else b"" for i in ids]
        raw = b"".join(pieces)
        lead, tail = _trim_utf8(raw)
        L = len(raw) - lead - tail
        try:
            text = raw[lead:len(raw) - tail].decode("utf-8")
        except UnicodeDecodeError:
            return None
        spans, ok, o = [], [], 0
        for p, c in zip(pieces, counted):
            a, b = o - lead, o + len(p) - lead
            o += len(p)
            inside = 0 <= a and b <= L
            spans.append((min(max(a, 0), L), min(max(b, 0), L)))
            ok.append(c and (inside or not p))
        final = bool(ids) and ids[-1] == self.s_tok.eos_token_id
        return text, Encoded(list(ids), spans, final), ok

    @torch.no_grad()
    def pair(self, batch: dict[str, torch.Tensor]) -> Paired:
        ids_all, seg_all, lab_all = (batch[k].cpu() for k in ("input_ids", "seg", "labels"))
        B, T = ids_all.shape
        rows: list[list[Example]] = []
        per_ex = []  # (row, student offset, Encoded s, ok, Encoded t, alignment)
        for r in range(B):
            row: list[Example] = []
            t_off = 0
            for j in range(1, int(seg_all[r].max()) + 1):
                where = (seg_all[r] == j).nonzero().flatten()
                if where.numel() == 0:
                    continue
                o = int(where[0])
                ids = ids_all[r, where].tolist()
                # token k is counted when position k - 1 carries its label
                counted = [k > 0 and int(lab_all[r, o + k - 1]) != IGNORE for k in range(len(ids))]
                side = self._student_side(ids, counted)
                if side is None:
                    continue
                text, s_enc, ok = side
                t_enc = encode(self.t_tok, text, self.t_table, bos=True, eos=s_enc.final_eos, what="teacher tokenizer")
                al = align(s_enc, t_enc)
                row.append(Example(t_enc.ids, start=1))
                per_ex.append((r, o, ok, t_off, al, len(t_enc.ids)))
                t_off += len(t_enc.ids)
            rows.append(row or [Example([self.t_tok.bos_token_id or 0, self.t_tok.eos_token_id or 0], start=1)])
        t_pad = self.t_tok.pad_token_id if self.t_tok.pad_token_id is not None else 0
        tb = collate(rows, t_pad, packed=True)
        Tt = tb["input_ids"].shape[1]
        s_pos, s_tok, s_chunk, t_pos, t_tok, t_chunk, s_first, t_first, valid = ([] for _ in range(9))
        base = 0
        for r, o, ok, t_o, al, _ in per_ex:
            good = [True] * al.n_chunks
            first_s = [-1] * al.n_chunks
            first_t = [-1] * al.n_chunks
            for k, c in enumerate(al.a_chunk):
                if c < 0:
                    continue
                if not ok[k]:
                    good[c] = False
                    continue
                if first_s[c] < 0:
                    first_s[c] = r * T + o + k - 1
                s_pos.append(r * T + o + k - 1)
                s_tok.append(int(ids_all[r, o + k]))
                s_chunk.append(base + c)
            for k, c in enumerate(al.b_chunk):
                if c < 0:
                    continue
                if k == 0:  # no position predicts a teacher's first token
                    good[c] = False
                    continue
                if first_t[c] < 0:
                    first_t[c] = r * Tt + t_o + k - 1
                t_pos.append(r * Tt + t_o + k - 1)
                t_tok.append(int(tb["input_ids"][r, t_o + k]))
                t_chunk.append(base + c)
            valid += [g and fs >= 0 and ft >= 0 for g, fs, ft in zip(good, first_s, first_t)]
            s_first += [max(f, 0) for f in first_s]
            t_first += [max(f, 0) for f in first_t]
            base += al.n_chunks
        dev = batch["input_ids"].device
        L = lambda x: torch.tensor(x, dtype=torch.long, device=dev)  # noqa: E731
        return Paired({k: v.to(dev) for k, v in tb.items()}, L(s_pos), L(s_tok), L(s_chunk), L(t_pos), L(t_tok),
                      L(t_chunk), L(s_first), L(t_first), torch.tensor(valid, dtype=torch.bool, device=dev))

    # ------------------------------------------------------------------ log-probs
    def student_logprobs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden (B, T, D), log-probs (B*T, Vs)) over the student tokenizer's real ids."""
        h = self.student_hidden(batch)
        w, b, f = output_head(self.student)  # with the model's output transform, as in model(...).logits
        z = head_logits(h, w, b, f)[..., : self.s_vocab].float()
        return h, F.log_softmax(z, -1).reshape(-1, z.shape[-1])

    @torch.no_grad()
    def teacher_logprobs(self, tb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.teacher is not None
        out = self.teacher.module(**model_inputs(tb), output_hidden_states=True)
        z = out.logits[..., : self.t_vocab].float()
        return out.hidden_states[-1], F.log_softmax(z, -1).reshape(-1, z.shape[-1])

    @staticmethod
    def chunk_logprobs(lp: torch.Tensor, pos: torch.Tensor, tok: torch.Tensor, chunk: torch.Tensor,
                       n: int) -> torch.Tensor:
        """Sum of token log-probs per chunk: (n,)."""
        per_tok = lp[pos, tok]
        return per_tok.new_zeros(n).index_add(0, chunk, per_tok)

    def hparams(self) -> dict[str, Any]:
        return {}
