"""Teacher-side generation (`teacher.generation`): the continuations `seq_kd` trains on and the text
`data.source: teacher` samples, written by transformers' batched, KV-cached `generate` (`hf`) or by
vLLM (`vllm`, when the package is installed and a CUDA device is present; `auto` picks it then).

vLLM loads the teacher folder a second time, in its own engine, for the generation only, and is
released before training; the student's own generation (`on_policy`) stays on transformers, since
its weights change at every step.
"""
from __future__ import annotations

import gc
import importlib.util
from collections.abc import Sequence

import torch

from distill.errors import ConfigError


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def resolve_backend(backend: str, source: str | None, where: str = "teacher.generation") -> str:
    """`hf` or `vllm` for `backend` (auto | hf | vllm); vllm needs the teacher's folder or hub id."""
    if backend == "hf":
        return "hf"
    if backend == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise ConfigError(f"{where}: vllm is not installed (pip install vllm, on a CUDA machine); use hf or auto.")
        if not source:
            raise ConfigError(f"{where}: vllm loads the teacher from its folder or hub id (teacher.path); this "
                              "teacher has none here.")
        return "vllm"
    return "vllm" if vllm_available() and source else "hf"


def vllm_generate(source: str, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, temperature: float,
                  eos_id: int | None, vocab_limit: int | None = None, seed: int = 0, dtype: str = "auto",
                  gpu_memory_utilization: float = 0.5) -> list[list[int]]:
    """Continuations (token lists, up to and including EOS) of `prompts` written by vLLM from the
    model at `source`; greedy at temperature 0, else plain sampling from the full distribution;
    ids at or above `vocab_limit` are never produced."""
    import vllm

    llm = vllm.LLM(model=source, tokenizer=source, dtype=dtype, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                   skip_tokenizer_init=True)
    try:
        params = vllm.SamplingParams(temperature=temperature, top_p=1.0, top_k=-1, max_tokens=max_new_tokens,
                                     stop_token_ids=[eos_id] if eos_id is not None else None, seed=seed,
                                     detokenize=False,
                                     allowed_token_ids=list(range(vocab_limit)) if vocab_limit else None)
        outs = llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        conts = []
        for o in outs:
            c = o.outputs[0]
            ids = list(c.token_ids)
            if eos_id is not None and c.finish_reason == "stop" and (not ids or ids[-1] != eos_id):
                ids.append(eos_id)  # stopped on EOS: keep it, as transformers' generate does
            if eos_id is not None and eos_id in ids:
                ids = ids[:ids.index(eos_id) + 1]
            conts.append(ids)
        return conts
    finally:
        del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
