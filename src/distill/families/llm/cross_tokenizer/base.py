"""What every cross-tokenizer method shares: re-tokenising each student example for the teacher
and aligning the two (see `alignment`), batch by batch.

The runner trains on student-tokenised examples (possibly packed). For each example the student's
tokens are spelled out in bytes, the text is tokenised by the teacher (its own BOS; EOS when the
student's example ends with one), and the two are aligned into chunks. The teacher batch is packed
like the student's, so a row holds the same texts on both sides.

Prompt/response examples (registered by `prepare_examples`, keyed by the student's prompt tokens)
give each side its own prompt: the teacher reads the raw prompt in its own chat template (or BOS +
prompt), the student in its own, and only the responses are aligned and scored.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from distill.families.llm.base import LMMethod
from distill.errors import ConfigError
from distill.families.llm.cross_tokenizer.alignment import AlignmentError, Encoded, align, encode, token_bytes_table
from distill.families.llm.data import IGNORE, Example, collate, model_inputs, prompt_ids
from distill.families.llm.models import output_head
from distill.losses.lm import hidden_token_logprobs, paired_rows

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
    token; `valid` (C,): every token of the chunk is a counted target on both sides;
    `t_examples`: (flat index of its first token, its ids, its first target index) of every teacher
    example of the teacher batch (what the aligned teacher cache is keyed and placed by)."""
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
    t_examples: list[tuple[int, list[int], int]] = field(default_factory=list)

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
        self._prompts: dict[tuple[int, ...], list[int]] = {}

    def prepare_examples(self, examples: list[Example], tokenizer) -> list[Example]:
        """Remember the teacher's prompt tokens of every prompt/response example (the student's
        examples reach `pair` as tokens only)."""
        for ex in examples:
            if ex.prompt is not None:
                self._prompts[tuple(ex.ids[:ex.start])] = prompt_ids(self.t_tok, ex.prompt)
        return examples

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
        prompts = getattr(self, "_prompts", {})
        rows: list[list[Example]] = []
        # per aligned example: (row, student offset of its first aligned token, ok, teacher offset of
        # its first aligned token, tokens before it in the teacher's example, alignment)
        per_ex = []
        t_exs: list[tuple[int, int, list[int], int]] = []  # (row, offset in the row, ids, start)
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
                k0 = next((k for k, c in enumerate(counted) if c), len(ids))
                t_prompt = prompts.get(tuple(ids[:k0])) if k0 < len(ids) else None
                if t_prompt is not None:  # each side reads the prompt in its own template; the responses align
                    side = self._student_side(ids[k0:], counted[k0:])
                else:
                    k0, t_prompt = 0, []
                    side = self._student_side(ids, counted)
                if side is None:
                    continue
                text, s_enc, ok = side
                t_enc = encode(self.t_tok, text, self.t_table, bos=not t_prompt, eos=s_enc.final_eos,
                               what="teacher tokenizer")
                al = align(s_enc, t_enc)
                t_ids = t_prompt + t_enc.ids
                row.append(Example(t_ids, start=max(len(t_prompt), 1)))
                t_exs.append((r, t_off, t_ids, max(len(t_prompt), 1)))
                per_ex.append((r, o + k0, ok, t_off + len(t_prompt), len(t_prompt), al))
                t_off += len(t_ids)
            rows.append(row or [Example([self.t_tok.bos_token_id or 0, self.t_tok.eos_token_id or 0], start=1)])
        t_pad = self.t_tok.pad_token_id if self.t_tok.pad_token_id is not None else 0
        tb = collate(rows, t_pad, packed=True)
        Tt = tb["input_ids"].shape[1]
        s_pos, s_tok, s_chunk, t_pos, t_tok, t_chunk, s_first, t_first, valid = ([] for _ in range(9))
        base = 0
        for r, o, ok, t_o, t_pre, al in per_ex:
            good = [True] * al.n_chunks
            first_s = [-1] * al.n_chunks
            first_t = [-1] * al.n_chunks
            for k, c in enumerate(al.a_chunk):
                if c < 0:
                    continue
                if not ok[k]:  # (ok is False for the example's first token: no position predicts it)
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
                if t_pre + k == 0:  # no position predicts a teacher example's first token
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
                      L(t_chunk), L(s_first), L(t_first), torch.tensor(valid, dtype=torch.bool, device=dev),
                      [(r * Tt + off, ids, start) for r, off, ids, start in t_exs])

    # ------------------------------------------------------------------ log-probs
    # Logits are only ever built for the positions a loss reads, (chunk_size, V) at a time inside
    # activation checkpointing (as the same-tokenizer losses of `distill.losses.lm`): memory grows
    # with the chunk, not with B * T * V.
    def student_head(self) -> tuple:
        return output_head(self.student)  # with the model's output transform, as in model(...).logits

    def teacher_head(self) -> tuple:
        assert self.teacher is not None
        return output_head(self.teacher.module)

    def chunk_logprobs(self, h: torch.Tensor, head: tuple, vocab: int, pos: torch.Tensor, tok: torch.Tensor,
                       chunk: torch.Tensor, n: int) -> torch.Tensor:
        """Sum of token log-probs per chunk (n,) from final hidden states h (B, T, D): token `tok[i]`
        predicted at flat position `pos[i]`, summed into chunk `chunk[i]`."""
        w, b, f = head
        per_tok = hidden_token_logprobs(h.reshape(-1, h.shape[-1])[pos], w, tok, bias=b, vocab=vocab,
                                        chunk_size=self.chunk_size, logit_map=f)
        return per_tok.new_zeros(n).index_add(0, chunk, per_tok)

    def first_rows(self, fn, h_s: torch.Tensor, h_t: torch.Tensor, p: Paired) -> torch.Tensor:
        """fn(z_student, z_teacher) -> (n,) at the positions predicting each valid chunk's first
        token on both sides, summed."""
        keep = p.valid.nonzero().flatten()
        hs = h_s.reshape(-1, h_s.shape[-1])[p.s_first[keep]]
        ht = h_t.reshape(-1, h_t.shape[-1])[p.t_first[keep]]
        return paired_rows(fn, hs, self.student_head(), ht, self.teacher_head(), student_vocab=self.s_vocab,
                           teacher_vocab=self.t_vocab, chunk_size=self.chunk_size).sum()

    def hparams(self) -> dict[str, Any]:
        return {}
