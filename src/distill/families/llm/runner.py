"""The llm family's run: load the teacher (converting a llama2.c checkpoint once) or connect to a
served one (`teacher.url` without `teacher.path`: tokenizer and targets from the server, nothing
of the teacher loaded here), build the data, then one student per method from the same
initialisation, each evaluated on held-out and out-of-domain text; summary.json and report.md in
the run folder. Teacher and student weights are in `dtype`; with `student.lora` each student is a
peft adapter on a frozen base, and `teacher.student_base` makes that base the teacher (`lora.py`).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from distill.engine import Engine
from distill.errors import ConfigError
from distill.families.llm.base import LMMethod, sample
from distill.families.llm.config import LLMRunConfig, LMMethodConfig, expand
from distill.families.llm.data import (Example, LMLoader, StreamedExamples, chat_examples, check_packing,
                                       messages_of, pair_of, prompt_response_examples, read_chats, read_hf_chats,
                                       read_hf_dataset, read_jsonl, read_texts, rows_of_lengths, set_chat_template,
                                       text_examples)
from distill.families.llm.evaluate import generate_text, lm_metrics
from distill.families.llm.lora import (BaseTeacher, adapter_parameters, load_adapter, save_adapter, student_base_of,
                                       wrap_lora)
from distill.families.llm.models import (DTYPES, build_student, count_parameters, load_causal_lm, load_tokenizer,
                                         resolve_source)
from distill.registry import methods, register_runner
from distill.dist import barrier, is_main, main_first
from distill.teacher import Teacher
from distill.utils import atomic_write_text, hash_json, seed_everything


def load_teacher(cfg: LLMRunConfig, device) -> tuple[Teacher, Any, str]:
    """(frozen teacher, tokenizer, resolved source). With `teacher.device_map` the model stays where
    accelerate placed it; with `teacher.student_base` it is a `BaseTeacher` over the students' base."""
    t = cfg.teacher
    tok_src = expand(t.tokenizer)
    path = cfg.student.path if t.student_base else t.path
    src = resolve_source(expand(path), tok_src, Path(cfg.cache_dir))  # type: ignore[arg-type]
    if tok_src is None or Path(tok_src).suffix == ".model":
        tok_src = src
    tok = load_tokenizer(tok_src, "teacher.tokenizer")
    if t.student_base:
        base = _student_base(src, cfg, device)
        return BaseTeacher(base), tok, src
    if t.device_map is not None:
        from distill.dist import world_size

        if world_size() > 1:
            raise ConfigError("teacher.device_map: every process would place its own copy of the teacher across "
                              "the devices; with several processes remove device_map (each process holds the "
                              "teacher on its own device).")
        model = load_causal_lm(src, dtype=t.dtype, device_map=t.device_map, offload_folder=expand(t.offload_folder))
        return Teacher(model), tok, src
    return Teacher(load_causal_lm(src, dtype=t.dtype).to(device)), tok, src


def _student_base(source: str, cfg: LLMRunConfig, device, what: str = "student.path") -> nn.Module:
    """A pretrained student base on `device` in student.dtype, quantised as student.lora.quantize says."""
    s = cfg.student
    quantize = s.lora.quantize if s.lora is not None else None
    model = load_causal_lm(source, what, dtype=s.dtype, quantize=quantize, device=device)
    return model if quantize is not None else model.to(device)


def student_source(cfg: LLMRunConfig) -> str | None:
    """student.path (a local one made absolute, a llama2.c checkpoint converted once into the cache)."""
    s = cfg.student
    if not s.path:
        return None
    tok = s.tokenizer if s.tokenizer and s.tokenizer != "byte" else cfg.teacher.tokenizer
    src = resolve_source(expand(s.path), expand(tok), Path(cfg.cache_dir))  # type: ignore[arg-type]
    return str(Path(src).resolve()) if Path(src).exists() else src  # a hub id stays as it is


def make_student(cfg: LLMRunConfig, s_tok, device, teacher: Teacher | None, out: Path | None = None,
                 save_base: Path | None = None) -> nn.Module:
    """A fresh student for one method: loaded from student.path or built from the sizes, in
    student.dtype; with student.lora, wrapped with a new adapter (on the teacher's base under
    teacher.student_base). With `out` (a student folder written by an earlier run), its saved
    adapter instead of a new one. `save_base`: where a freshly built base is saved (before the
    adapter is added), since the adapter is of no use without it."""
    s = cfg.student
    base = student_base_of(teacher)
    if base is None:
        if s.path:
            base = _student_base(student_source(cfg), cfg, device)  # type: ignore[arg-type]
        elif out is not None and s.lora is not None:
            base = _student_base(str(out / "base"), cfg, device, "student")
        else:
            base = build_student(s.arch, len(s_tok), s_tok.bos_token_id, s_tok.eos_token_id, hidden_size=s.hidden_size,
                                 num_layers=s.num_layers, num_heads=s.num_heads, num_kv_heads=s.num_kv_heads,
                                 intermediate_size=s.intermediate_size, max_positions=max(cfg.data.seq_len, 64) * 2,
                                 tie_embeddings=s.tie_embeddings, pad_vocab_to=s.pad_vocab_to).to(DTYPES[s.dtype])
            if save_base is not None and s.lora is not None:
                base.save_pretrained(save_base)
            base.to(device)
    if s.lora is None:
        return base
    return load_adapter(base, out) if out is not None else wrap_lora(base, s.lora)


def teacher_samples(teacher: Teacher, tok, n: int, tokens: int, temperature: float, seed: int, device,
                    batch: int = 128) -> list[list[int]]:
    """`n` continuations of BOS sampled from the teacher (deterministic given the seed)."""
    torch.manual_seed(seed)
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    out: list[list[int]] = []
    for i in range(0, n, batch):
        m = min(batch, n - i)
        ids = torch.full((m, 1), bos, dtype=torch.long, device=device)
        out += sample(teacher.module, ids, torch.ones_like(ids), max_new_tokens=tokens, temperature=temperature,
                      eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    return out


def build_examples(cfg: LLMRunConfig, tok, teacher: Teacher | None, device, log, source: str | None = None
                   ) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, held-out, out-of-domain) examples."""
    d = cfg.data
    if d.source == "teacher":
        if teacher is None:
            raise ConfigError("data.source: 'teacher' needs the teacher model here; give teacher.path, or use "
                              "data.source=text|jsonl|hf with data.path.")
        from distill.families.llm.generation import resolve_backend, vllm_generate

        backend = resolve_backend(cfg.teacher.generation, source)
        spec = {"teacher": teacher.fingerprint(), "n": d.num_samples, "e": d.eval_samples,
                "t": d.sample_tokens, "temp": d.sample_temperature, "seed": cfg.seed}
        key = hash_json({**spec, "generation": "vllm"} if backend == "vllm" else spec)  # hf keeps the older keys
        path = Path(cfg.cache_dir) / "llm_data" / f"teacher-samples-{key}.json"
        if path.is_file():
            seqs = json.loads(path.read_text())
        else:
            log(f"data: sampling {d.num_samples}+{d.eval_samples} texts from the teacher (cached in {path})")
            if backend == "vllm":
                bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
                seqs = vllm_generate(source, [[bos]] * (d.num_samples + d.eval_samples), max_new_tokens=d.sample_tokens,
                                     temperature=d.sample_temperature, eos_id=tok.eos_token_id, seed=cfg.seed)
            else:
                seqs = teacher_samples(teacher, tok, d.num_samples + d.eval_samples, d.sample_tokens,
                                       d.sample_temperature, cfg.seed, device)
            atomic_write_text(path, json.dumps(seqs))
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        exs = [Example(bos + s, start=1, prompt_len=min(d.prompt_tokens, len(s)),
                       n_bytes=len(tok.decode(s, skip_special_tokens=True).encode()))
               for s in seqs if len(s) > d.prompt_tokens]
        split = len(exs) - min(d.eval_samples, len(exs) // 2)
        train, held = exs[:split], exs[split:]
    else:
        if d.source == "chat":
            set_chat_template(tok, d.chat_template)

        def load(path: str | None, split: str | None) -> list[Example]:
            if d.source == "chat":
                local = Path(expand(path)).is_file()  # type: ignore[arg-type]
                convs = read_chats(expand(path), d.messages_field) if local \
                    else read_hf_chats(path, split or d.split, d.messages_field)  # type: ignore[arg-type]
                exs = chat_examples(convs[: d.max_docs], tok, d.seq_len, d.loss_on)
                if len(exs) < len(convs[: d.max_docs]):
                    log(f"data: {len(convs[: d.max_docs]) - len(exs)} conversation(s) kept no target token within "
                        f"data.seq_len={d.seq_len} and were dropped")
                return exs
            if d.source == "jsonl":
                pairs = read_jsonl(expand(path), d.prompt_field, d.response_field, d.label_field)[: d.max_docs]  # type: ignore[arg-type]
                return prompt_response_examples(pairs, tok, d.seq_len)
            texts = read_hf_dataset(path, split or d.split, d.text_field) if d.source == "hf" \
                else read_texts(expand(path), d.separator)  # type: ignore[arg-type]
            return text_examples(texts[: d.max_docs], tok, d.seq_len, d.prompt_tokens)

        def streamed(path: str | None) -> StreamedExamples:
            local = Path(expand(path))  # type: ignore[arg-type]
            if not local.is_file():
                raise ConfigError(f"data.streaming: data.path must be a local JSONL file, not {path!r}.")
            if d.source == "chat":
                def make(rec, where):
                    return chat_examples([messages_of(rec, where, d.messages_field)], tok, d.seq_len, d.loss_on)
            else:
                def make(rec, where):
                    pair = pair_of(rec, where, d.prompt_field, d.response_field, d.label_field)
                    return prompt_response_examples([pair], tok, d.seq_len)
            exs = StreamedExamples(local, make, max_records=d.max_docs)
            log(f"data: {len(exs)} examples indexed in {local} (streamed: read from disk batch by batch)")
            return exs

        if d.eval_path or d.eval_split:
            train = streamed(d.path) if d.streaming else load(d.path, d.split)
            held = list(streamed(d.eval_path or d.path)) if d.streaming else load(d.eval_path or d.path, d.eval_split)
        else:
            exs = streamed(d.path) if d.streaming else load(d.path, d.split)
            g = torch.Generator().manual_seed(cfg.seed)
            perm = torch.randperm(len(exs), generator=g).tolist()
            n_eval = max(1, int(len(exs) * d.eval_fraction))
            held = [exs[i] for i in perm[:n_eval]]
            train = exs.subset(perm[n_eval:]) if d.streaming else [exs[i] for i in perm[n_eval:]]
    ood: list[Example] = []
    if d.ood_path:
        text = Path(expand(d.ood_path)).read_text(encoding="utf-8")[: d.ood_max_chars]  # type: ignore[arg-type]
        ood = text_examples([text], tok, d.seq_len, d.prompt_tokens)
    return train, held, ood


def train_student(method: LMMethod, train: list[Example], cfg: LLMRunConfig, mcfg: LMMethodConfig, pad_id: int,
                  out_dir: Path, metrics_path: Path, label: str) -> Engine:
    """Train `method` on the examples with the engine's loop (`Engine.fit`)."""
    train_cfg = mcfg.train or cfg.train
    packed = cfg.data.pack and not method.uses_prompts
    if packed:  # flash attention would let packed examples attend to each other
        check_packing(method.student, method.teacher.module if method.teacher is not None else None)
    engine = Engine(cfg.engine, out_dir, seed=cfg.seed, name=label, metrics_path=metrics_path)
    loader = LMLoader(rows_of_lengths(train, cfg.data.seq_len, packed), cfg.data.batch_size, pad_id, packed=packed,
                      seed=cfg.seed, grad_accum=cfg.engine.grad_accum, with_prompts=method.uses_prompts,
                      rank=engine.accelerator.process_index, world=engine.accelerator.num_processes,
                      examples=train)
    engine.fit(method, loader, train_cfg, weights=mcfg.weights)
    return engine


def evaluate_model(model, tok, held, ood, cfg: LLMRunConfig, device, teacher: Teacher | None,
                   teacher_top1: Callable | None = None) -> dict[str, Any]:
    kw = dict(pad_id=tok.pad_token_id, batch_size=cfg.data.eval_batch_size, seq_len=cfg.data.seq_len, device=device,
              ece_bins=cfg.eval.ece_bins)
    m = lm_metrics(model, held, teacher=teacher.module if teacher is not None else None, teacher_top1=teacher_top1, **kw)
    if ood:
        o = lm_metrics(model, ood, **kw)
        m.update({"ood_loss": o["loss"], "ood_bits_per_byte": o["bits_per_byte"]})
    m["params"] = count_parameters(model)
    m["samples"] = [generate_text(model, tok, cfg.eval.sample_prompt, max_new_tokens=cfg.eval.sample_tokens,
                                  device=device, greedy=(i == 0), seed=cfg.seed + i) for i in range(cfg.eval.samples)]
    return m


def _check_served_k(cfg: LLMRunConfig, remote) -> None:
    """Refuse, before training, a teacher.served_top_k above what the server answers."""
    most = int(remote.info.get("max_k") or 0)
    if most and cfg.teacher.served_top_k > most:
        raise ConfigError(f"teacher.served_top_k: {cfg.teacher.served_top_k}, but the served teacher at "
                          f"{cfg.teacher.url} answers at most k = {most}; set teacher.served_top_k <= {most}, or "
                          "restart `distill serve-teacher` with a larger --max-k.")


@register_runner("llm")
def run_llm(cfg: LLMRunConfig, *, run_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    probe = Engine(cfg.engine, None, seed=cfg.seed)
    device = probe.device
    from distill.families.llm.plan import check

    check(cfg, probe.accelerator.num_processes, log)  # before any weight is loaded
    teacher: Teacher | None = None
    served = None  # the served teacher, when the recipe gives only teacher.url
    with main_first():  # the main process converts / samples into the cache, the others read it
        if cfg.teacher.path or cfg.teacher.student_base:
            teacher, tok, src = load_teacher(cfg, device)
            log(f"teacher: {src} ({count_parameters(teacher.module):,} parameters, vocab {len(tok)})")
        else:
            from distill.families.llm.served import ServedTeacher

            served = ServedTeacher(cfg.teacher.url)  # type: ignore[arg-type]
            tok, src = served.tokenizer(expand(cfg.teacher.tokenizer)), str(cfg.teacher.url)
            log(f"teacher: served at {src} (fingerprint {served.fingerprint[:12]}, vocab {served.vocab_size}), "
                f"tokenizer {'from ' + str(cfg.teacher.tokenizer) if cfg.teacher.tokenizer else 'from the server'} "
                f"(vocab {len(tok)}); not loaded here")
        train, held, ood = build_examples(cfg, tok, teacher, device, log, source=src)
    log(f"data: {len(train)} train / {len(held)} held-out examples, {len(ood)} out-of-domain windows")
    metrics_path = run_dir / "metrics.jsonl"
    results: dict[str, Any] = {"family": "llm", "primary_metric": "bits_per_byte", "higher_is_better": False,
                               "teacher": None, "students": {}}
    if teacher is not None:
        t_metrics = evaluate_model(teacher.module, tok, held, ood, cfg, device, None)
    else:  # the full distribution stays on the server: the students' teacher agreement uses its top-1
        from distill.families.llm.served import NOT_EVALUATED

        assert served is not None
        t_metrics = {"served": True, "fingerprint": served.fingerprint, "vocab_size": served.vocab_size,
                     "note": NOT_EVALUATED}
        log(f"teacher: {NOT_EVALUATED}")
    t_metrics["source"] = src
    results["teacher"] = t_metrics

    s_tok, s_data = tok, (train, held, ood)
    if cfg.student.tokenizer:  # the student has its own tokenizer: same texts, its own tokens
        from distill.families.llm.cross_tokenizer.byte_tokenizer import load_student_tokenizer
        from distill.families.llm.cross_tokenizer.data import retokenize

        s_tok = load_student_tokenizer(expand(cfg.student.tokenizer))  # type: ignore[arg-type]
        s_data = tuple(retokenize(x, tok, s_tok, cfg.data.seq_len, cfg.data.prompt_tokens) for x in (train, held, ood))
        log(f"student tokenizer: {cfg.student.tokenizer} (vocab {len(s_tok)})")
    s_train, s_held, s_ood = s_data
    same_tok = s_tok is tok
    served_top1 = served.top1(tok.pad_token_id or 0) if served is not None and same_tok else None

    for mcfg in cfg.methods:
        label = mcfg.display
        out = run_dir / "students" / label
        done = out / "result.json"
        entry = methods.get(mcfg.name, "llm")
        if not same_tok and entry.builder.needs_teacher and not entry.builder.cross_tokenizer:
            raise ConfigError(f"methods: {mcfg.name!r} needs the teacher's tokenizer, but student.tokenizer="
                              f"{cfg.student.tokenizer!r}; use a cross-tokenizer method (alm, uld, hybrid).")
        barrier()
        lora = cfg.student.lora
        speeds: dict[str, float] = {}  # generation tokens/s measured while this student trained
        if done.is_file():
            log(f"student {label}: already trained (resumed run), reusing {out}")
            student = (make_student(cfg, s_tok, device, teacher, out) if lora is not None
                       else load_causal_lm(str(out), "student").to(device))
        else:
            log(f"student {label}: training with {mcfg.name}")
            seed_everything(cfg.seed)  # every method starts from the same student initialisation
            student = make_student(cfg, s_tok, device, teacher, save_base=out / "base" if is_main() else None)
            method: LMMethod = entry.builder(student, teacher if entry.builder.needs_teacher else None, **mcfg.params)
            method.pad_id, method.eos_id = s_tok.pad_token_id, s_tok.eos_token_id
            method.set_tokenizers(tok, s_tok)
            if getattr(method, "generates_with_teacher", False):
                from distill.families.llm.generation import resolve_backend

                method.generation = resolve_backend(cfg.teacher.generation, src if teacher is not None else None)
                method.teacher_source, method.seed = src, cfg.seed
                t_gen = time.perf_counter()
            examples = method.prepare_examples(s_train, s_tok)
            if getattr(method, "generates_with_teacher", False):
                n_new = sum(len(e.ids) - e.start for e in examples)
                secs = time.perf_counter() - t_gen
                log(f"student {label}: the teacher wrote {n_new:,} tokens with {method.generation} in {secs:.1f} s "
                    f"({n_new / max(secs, 1e-9):,.0f} tokens/s)")
                if n_new:
                    speeds["teacher_tokens_per_s"] = n_new / max(secs, 1e-9)
            if cfg.teacher.url and getattr(method, "reads_teacher_cache", False):
                from distill.families.llm.served import ServedTargets

                t_kw = dict(pad_id=tok.pad_token_id or 0)
                if served is not None:  # the connection of this run: replies from another model are refused
                    t_kw["remote"] = served.remote
                method.cache = ServedTargets(cfg.teacher.url, cfg.teacher.served_top_k,
                                             float(getattr(method, "temperature", 1.0)), **t_kw)
                if teacher is not None and method.cache.meta["fingerprint"] != teacher.fingerprint():
                    raise ConfigError(f"teacher.url: the served teacher ({method.cache.meta['fingerprint']}) is not "
                                      f"teacher.path ({teacher.fingerprint()}); serve the same model.")
                _check_served_k(cfg, method.cache.remote)
                log(f"student {label}: targets from the served teacher at {cfg.teacher.url}")
            elif cfg.teacher.url and getattr(method, "reads_aligned_cache", False) and method.reads_aligned(mcfg.params):
                from distill.families.llm.cross_tokenizer.cache import ServedAligned

                method.cache = ServedAligned(cfg.teacher.url, remote=served.remote if served is not None else None,
                                             pad_id=tok.pad_token_id or 0, vocab=method.t_vocab,
                                             top_k=cfg.teacher.served_top_k)
                if teacher is not None and method.cache.meta["fingerprint"] != teacher.fingerprint():
                    raise ConfigError(f"teacher.url: the served teacher ({method.cache.meta['fingerprint']}) is not "
                                      f"teacher.path ({teacher.fingerprint()}); serve the same model.")
                what = "top-k" if getattr(method, "aligned_cache_kind", "") == "topk" else "token log-probs"
                if what == "top-k":
                    _check_served_k(cfg, method.cache.remote)
                log(f"student {label}: the teacher's {what} from the served teacher at {cfg.teacher.url}")
            elif cfg.teacher.cache_top_k and getattr(method, "reads_teacher_cache", False):
                from distill.families.llm.cache import attach_cache

                attach_cache(method, cfg, teacher, tok, examples, device, log)
            elif cfg.teacher.cache_top_k and getattr(method, "reads_aligned_cache", False):
                from distill.families.llm.cross_tokenizer.cache import attach_aligned_cache

                attach_aligned_cache(method, cfg, teacher, examples, device, log)
            elif cfg.teacher.cache_top_k and teacher is not None and entry.builder.needs_teacher:
                log(f"student {label}: {mcfg.name} reads no teacher cache; it runs the teacher while training")
            engine = train_student(method, examples, cfg, mcfg, s_tok.pad_token_id, out, metrics_path, label)
            n_gen, gen_secs = getattr(method, "generated", (0, 0.0))
            if n_gen:
                speeds["student_tokens_per_s"] = n_gen / max(gen_secs, 1e-9)
                log(f"student {label}: sampled {n_gen:,} tokens itself in {gen_secs:.1f} s "
                    f"({speeds['student_tokens_per_s']:,.0f} tokens/s, transformers' generate)")
            if is_main():
                if lora is not None:  # adapter_config.json + adapter_model.safetensors (+ merged/)
                    save_adapter(student, s_tok, out, merge=lora.merge, dtype=cfg.student.dtype,
                                 base_path=student_source(cfg) or str((out / "base").resolve()))
                else:
                    student.save_pretrained(out)
                    s_tok.save_pretrained(out)
                atomic_write_text(done, json.dumps({"method": mcfg.name, "params": mcfg.params,
                                                    "steps": engine.step_count, "last_terms": engine.last_terms,
                                                    "lora": lora is not None}))
                shutil.rmtree(out / "checkpoints", ignore_errors=True)
        m = evaluate_model(student, s_tok, s_held, s_ood, cfg, device, teacher if same_tok else None, served_top1)
        m["method"] = mcfg.name
        m.update(speeds)
        if lora is not None:
            m["adapter_params"] = adapter_parameters(student)
            if student_base_of(teacher) is not None:
                student.unload()  # the shared base, without this method's adapter, for the next one
        results["students"][label] = m
        # no agreement for a student with its own tokenizer (its tokens are not the teacher's): "-"
        agreement = f"{m['teacher_agreement']:.3f}" if "teacher_agreement" in m else "-"
        log(f"student {label}: bits/byte {m['bits_per_byte']:.4f}, teacher agreement {agreement}")

    results["best"] = min(results["students"], key=lambda k: results["students"][k]["bits_per_byte"])
    results["data"] = {"source": cfg.data.source, "train": len(train), "held_out": len(held), "ood": len(ood)}
    if is_main():
        atomic_write_text(run_dir / "summary.json", json.dumps(results, indent=2))
        atomic_write_text(run_dir / "report.md", report(cfg, results))
    barrier()
    return results


def report(cfg: LLMRunConfig, results: dict[str, Any]) -> str:
    cols = ["params", "loss", "perplexity", "bits_per_byte", "ood_bits_per_byte", "teacher_agreement",
            "token_accuracy", "ece"]
    rows = [("teacher", results["teacher"])] + list(results["students"].items())
    t = results["teacher"]
    if t.get("served"):
        who = (f"Teacher served at `{t['source']}` (fingerprint `{t['fingerprint'][:12]}`): {t['note']}; "
               "the students' teacher agreement is with its served top-1")
    else:
        who = (f"Teacher `{cfg.teacher.path}`" if not cfg.teacher.student_base
               else f"Teacher: the students' base `{cfg.student.path}` (adapter left out)")
    lines = [f"# {cfg.name}: language-model distillation", "",
             f"{who}; data source `{cfg.data.source}` "
             f"({results['data']['train']} train / {results['data']['held_out']} held-out examples). "
             "Lower bits per byte is better; `ood` is out-of-domain text.", "",
             "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in rows:
        cells = [("-" if c not in m else f"{m[c]:,}" if c == "params" else f"{m[c]:.4f}") for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    speeds = [f"{name}: " + ", ".join(f"the {who} {m[k]:,.0f}" for who, k in
                                       (("teacher", "teacher_tokens_per_s"), ("student", "student_tokens_per_s")) if k in m)
              for name, m in results["students"].items()
              if "teacher_tokens_per_s" in m or "student_tokens_per_s" in m]
    if speeds:
        lines += ["", "Generation, tokens/s while training (transformers' generate unless teacher.generation: vllm): "
                  + "; ".join(speeds) + "."]
    lines += ["", "## Samples (first greedy, then sampled)", ""]
    for name, m in rows:
        for s in m.get("samples", []):
            lines.append(f"- **{name}**: " + s.replace("\n", " "))
    return "\n".join(lines) + "\n"
