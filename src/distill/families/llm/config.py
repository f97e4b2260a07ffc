"""The llm family's recipe sections.

Paths may start with `$DISTILL_ASSETS/`: that is the variable's value, else `../shared/assets`
beside the repository root.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from distill.config import check_methods, Component, MethodConfig, register_config, RunConfig, Strict, TrainConfig
from distill.errors import ConfigError
from distill.utils import assets_dir, expand  # noqa: F401  (recipes' $DISTILL_ASSETS paths)

DType = Literal["fp32", "bf16", "fp16"]


class LMTeacherConfig(Strict):
    """The teacher: a model loaded here (`path`), a served one (`url`), or both.

    With only `url` nothing of the teacher is loaded in this process: the tokenizer comes from the
    server (or `tokenizer`), methods that read served targets (token_kd, alm) train from it, the
    teacher's own metrics are not evaluated and the students' teacher agreement uses its served
    top-1. Data sampled from the teacher (`data.source: teacher`) and methods that run the teacher
    here (seq_kd, on_policy, first, uld, hybrid) then need `path`. With both, the
    served model must be `path` (same weights fingerprint) and `path` serves evaluation and data."""
    path: str | None = Field(None, description="transformers folder, hub id, or llama2.c .bin (converted once); "
                                               "optional when `url` is given")
    tokenizer: str | None = Field(None, description="tokenizer folder/id; the SentencePiece model for a llama2.c .bin; "
                                                    "with only `url`, a local tokenizer to use instead of the served one")
    cache_top_k: int | None = Field(None, ge=1, description="cache the teacher's top-k log-probs per target token on "
                                                           "disk; methods that can (token_kd) read it instead of the teacher")
    cache_format: Literal["exact", "compressed"] = Field(
        "exact", description="exact: int32 ids, fp16 log-probs (6 k + 4 bytes/token); compressed: the tokens with "
                             "p >= cache_min_prob among the top cache_top_k, sqrt-domain codes of cache_bits bits, "
                             "packed by cache_coder (docs/benchmarks/llm_cache_codecs.md)")
    cache_min_prob: float = Field(1e-5, ge=0, lt=1, description="compressed cache: the least probability kept "
                                                               "(the rest join the exact tail mass)")
    cache_bits: int = Field(8, ge=2, le=16, description="compressed cache: bits per kept probability")
    cache_coder: Literal["deflate", "lzma"] = Field(
        "deflate", description="compressed cache: how each example's record is packed; lzma takes 9-13% fewer "
                               "bytes and 1.4-2.6x as long to decode (docs/benchmarks/llm_cache_codecs.md)")
    url: str | None = Field(None, description="a `distill serve-teacher` address; methods that can (token_kd, alm) take "
                                              "their targets from it instead of running the teacher here; without "
                                              "`path`, the tokenizer comes from it too")
    served_top_k: int = Field(64, ge=1, description="k asked of the served teacher")
    generation: Literal["auto", "hf", "vllm"] = Field(
        "auto", description="what writes the teacher's text (seq_kd's continuations, data.source: teacher): hf "
        "(transformers' batched, KV-cached generate) or vllm (when installed, on CUDA); auto: vllm when it can")
    dtype: DType = Field("fp32", description="weights and compute of the teacher; the losses upcast its logits to "
                                             "fp32")
    device_map: str | dict[str, int | str] | None = Field(
        None, description="passed to `from_pretrained` (accelerate big-model loading: `auto`, `cpu`, or a "
                          "module -> device map); the teacher is then left where it was placed")
    offload_folder: str | None = Field(None, description="with device_map: where weights that fit on no device go")
    student_base: bool = Field(False, description="the teacher is the student's own base model (student.path) "
                                                  "with its LoRA adapter left out: one copy of the weights in memory")


class LMLoraConfig(Strict):
    """A LoRA adapter on the student (peft): only the adapter trains, the base stays frozen."""
    r: int = Field(8, ge=1, description="rank of the adapter")
    alpha: float = Field(16.0, gt=0, description="scale numerator: the update is alpha / r * B A")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | str | None = Field(
        None, description="module names (or a regex) that get an adapter; default: peft's choice for the "
                          "architecture (the attention projections)")
    merge: bool = Field(False, description="also save the base with the adapter merged in (`merged/`, a plain "
                                           "transformers folder)")
    quantize: Literal["nf4", "fp4", "int8"] | None = Field(
        None, description="QLoRA: hold the frozen base quantised by bitsandbytes (nf4: 4-bit NormalFloat with "
                          "double quantisation, as in QLoRA; fp4; int8: LLM.int8), computing in student.dtype; "
                          "needs student.path (a pretrained base)")


class LMStudentConfig(Strict):
    path: str | None = Field(None, description="start from this transformers folder instead of a fresh model")
    arch: Literal["llama", "gpt2"] = "llama"
    hidden_size: int = Field(32, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int | None = Field(None, ge=1)
    intermediate_size: int | None = Field(None, ge=1)
    tie_embeddings: bool = True
    pad_vocab_to: int = Field(1, ge=1, description="round the vocabulary up (padded rows are masked in losses)")
    tokenizer: str | None = Field(None, description="the student's own tokenizer: `byte`, or a tokenizer folder "
                                                    "(default: the teacher's; cross-tokenizer methods align the two)")
    dtype: DType = Field("fp32", description="weights of the student; bf16/fp16 only with `lora` (the adapter "
                                             "trains in fp32); for mixed precision use engine.precision")
    lora: LMLoraConfig | None = Field(None, description="train a LoRA adapter instead of the whole student")


class LMDataConfig(Strict):
    source: Literal["text", "jsonl", "chat", "hf", "teacher"] = Field(
        "teacher", description="text: plain text; jsonl: prompt/response pairs; chat: conversations (a JSONL file, "
        "or a HF data set, with a list of {role, content} messages per row) rendered with the chat template; hf: "
        "a HF data set's text column; teacher: text sampled from the teacher")
    path: str | None = Field(None, description="text file/folder, JSONL file, or HF data set name/path")
    eval_path: str | None = None
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="held-out share when eval_path is not given")
    separator: str = Field("\n\n", description="document separator in text files")
    text_field: str = "text"
    prompt_field: str = "prompt"
    response_field: str = "response"
    label_field: str | None = Field(None, description="JSONL key marking a response correct (true) or not (redi)")
    messages_field: str = Field("messages", description="chat data: the key (JSONL) or column (HF) of the messages")
    chat_template: str | None = Field(None, description="chat data: a Jinja chat template (text, or a file holding "
                                      "it) for a tokenizer without one, or to replace its own; saved with the student")
    loss_on: Literal["assistant", "last", "all"] = Field(
        "assistant", description="chat data: the tokens the student learns: every assistant reply (its content and "
        "end-of-turn markup), the last reply only, or every token of the conversation")
    split: str = "train"
    eval_split: str | None = None
    max_docs: int | None = Field(None, ge=1)
    streaming: bool = Field(False, description="jsonl / chat files: keep no token lists in memory; one pass records "
                            "where each example is, and each batch reads and tokenizes its own lines")
    # source = teacher: the training text is sampled from the teacher (TinyStories-like for stories260K)
    num_samples: int = Field(1000, ge=1)
    eval_samples: int = Field(200, ge=1)
    sample_tokens: int = Field(256, ge=8)
    sample_temperature: float = Field(1.0, gt=0)
    seq_len: int = Field(256, ge=8)
    pack: bool = True
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(32, ge=1)
    prompt_tokens: int = Field(16, ge=1, description="prompt length of plain-text examples for generation methods")
    ood_path: str | None = Field(None, description="out-of-domain text for bits per byte (e.g. tinyshakespeare)")
    ood_max_chars: int = Field(20000, ge=100)


LMMethodConfig = MethodConfig  # the shared entry of a `methods:` list


class LMEvalConfig(Strict):
    ece_bins: int = Field(15, ge=2)
    samples: int = Field(2, ge=0, description="generated samples per model in the report")
    sample_prompt: str = "Once upon a time"
    sample_tokens: int = Field(48, ge=1)


@register_config("llm")
class LLMRunConfig(RunConfig):
    family: Literal["llm"] = "llm"
    teacher: LMTeacherConfig
    student: LMStudentConfig = Field(default_factory=LMStudentConfig)
    data: LMDataConfig = Field(default_factory=LMDataConfig)
    methods: list[LMMethodConfig] = Field(default_factory=lambda: [LMMethodConfig(name="sft"),
                                                                   LMMethodConfig(name="token_kd")], min_length=1)
    eval: LMEvalConfig = Field(default_factory=LMEvalConfig)
    memory_check: bool = Field(True, description="estimate the peak memory per device before loading anything "
                               "(`distill plan`) and refuse a recipe that does not fit")

    def check_components(self) -> None:
        from distill.registry import methods

        check_methods(self.methods, "llm")
        for i, m in enumerate(self.methods):
            entry = methods.get(m.name, "llm")
            if self.student.tokenizer and entry.builder.needs_teacher and not getattr(entry.builder, "cross_tokenizer", False):
                raise ConfigError(f"methods.{i}.name: {m.name!r} needs the teacher's tokenizer, but student.tokenizer="
                                  f"{self.student.tokenizer!r}; use a cross-tokenizer method (alm, uld, hybrid).")
        t = self.teacher
        self._check_precision_and_lora()
        if self.data.streaming:
            if self.data.source not in ("jsonl", "chat"):
                raise ConfigError(f"data.streaming: reads JSONL files (data.source jsonl or chat), not "
                                  f"data.source={self.data.source!r}; turn it off for this source.")
            if t.cache_top_k:
                raise ConfigError("data.streaming: the teacher cache (teacher.cache_top_k) is built over the whole "
                                  "training set in memory; drop one of the two.")
            if self.student.tokenizer:
                raise ConfigError("data.streaming: a student with its own tokenizer (student.tokenizer) retokenizes "
                                  "the whole training set in memory; drop one of the two.")
        if not t.path and not t.url and not t.student_base:
            raise ConfigError("teacher.path: required (a transformers folder, hub id or llama2.c .bin), unless "
                              "teacher.url names a served teacher (`distill serve-teacher`) or teacher.student_base "
                              "makes the student's base model the teacher.")
        if not t.path and not t.student_base:
            self._check_served_only()
        if self.data.source != "teacher" and not self.data.path:
            raise ConfigError(f"data.path: required for data.source={self.data.source!r}.")
        for where, p in (("data.path", self.data.path), ("data.eval_path", self.data.eval_path),
                         ("data.ood_path", self.data.ood_path)):
            if p and self.data.source != "hf" and not Path(expand(p)).exists():  # type: ignore[arg-type]
                raise ConfigError(f"{where}: {expand(p)!r} does not exist.")

    def _check_precision_and_lora(self) -> None:
        """Half-precision students, LoRA, big-model loading and the teacher-as-student-base mode."""
        t, s, strategy = self.teacher, self.student, self.engine.strategy
        if s.dtype != "fp32" and s.lora is None:
            raise ConfigError(f"student.dtype: {s.dtype} weights would be updated in {s.dtype} (no fp32 master "
                              "copy), which loses small updates; keep student.dtype=fp32 and set "
                              f"engine.precision={s.dtype} (fp32 weights, {s.dtype} compute), or add student.lora "
                              f"(the base stays {s.dtype}, the adapter trains in fp32).")
        if s.lora is not None:
            import importlib.util

            if importlib.util.find_spec("peft") is None:
                raise ConfigError("student.lora: LoRA students need peft, which is not installed; "
                                  "`pip install peft` (or `pip install distill[llm]`).")
        if s.lora is not None and s.lora.quantize is not None:
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                raise ConfigError(f"student.lora.quantize: {s.lora.quantize} needs bitsandbytes, which is not "
                                  "installed; `pip install bitsandbytes`, or remove quantize (a LoRA on a "
                                  "student.dtype base).")
            if not s.path:
                raise ConfigError("student.lora.quantize: a quantised base is a pretrained model held frozen; give it "
                                  "as student.path (a student built from sizes starts untrained and must train "
                                  "whole).")
        if s.lora is not None and s.lora.quantize is not None and strategy == "fsdp":
            raise ConfigError(f"student.lora.quantize: {s.lora.quantize} with engine.strategy=fsdp is not supported "
                              "(FSDP does not shard bitsandbytes' quantised weights here); use engine.strategy=ddp "
                              "(each process holds the quantised base, only the adapter's gradients are reduced), "
                              "or remove quantize to shard a LoRA student's base with FSDP.")
        for key in ("cache_min_prob", "cache_bits", "cache_coder"):
            if key in t.model_fields_set and t.cache_format != "compressed":
                raise ConfigError(f"teacher.{key}: a setting of the compressed cache, but teacher.cache_format is "
                                  f"{t.cache_format!r}; set teacher.cache_format: compressed, or remove {key}.")
        if t.offload_folder and t.device_map is None:
            raise ConfigError("teacher.offload_folder: only used with teacher.device_map (e.g. `auto`); set it or "
                              "remove offload_folder.")
        if t.device_map is not None and strategy == "fsdp":
            raise ConfigError("teacher.device_map: engine.strategy=fsdp shards the teacher itself; remove "
                              "teacher.device_map or use engine.strategy=ddp.")
        if not t.student_base:
            return
        if s.lora is None:
            raise ConfigError("teacher.student_base: the teacher is the student's base with its adapter left out, "
                              "and a fully trained student has no frozen base; add student.lora, or give "
                              "teacher.path instead.")
        if not s.path:
            raise ConfigError("teacher.student_base: the teacher is the pretrained model the student starts from; "
                              "give it as student.path.")
        for key in ("path", "url", "device_map"):
            if getattr(t, key) is not None:
                raise ConfigError(f"teacher.{key}: not used with teacher.student_base (the teacher is student.path "
                                  "in this process, on the student's device); remove one of the two.")
        if "dtype" in t.model_fields_set and t.dtype != s.dtype:
            raise ConfigError(f"teacher.dtype: {t.dtype}, but with teacher.student_base the teacher is the "
                              f"student's base, whose weights are student.dtype={s.dtype}; remove teacher.dtype.")
        if s.tokenizer:
            raise ConfigError("student.tokenizer: with teacher.student_base the student and the teacher are one "
                              "model with one tokenizer; remove student.tokenizer.")
        if strategy == "fsdp":
            raise ConfigError("teacher.student_base: not with engine.strategy=fsdp (the teacher's weights are the "
                              "student's); use engine.strategy=ddp.")

    def _check_served_only(self) -> None:
        """Only `teacher.url`: refuse what needs the teacher model in this process, saying how to fix it."""
        from distill.registry import methods

        if self.data.source == "teacher":
            raise ConfigError("data.source: 'teacher' samples the training text from the teacher, which needs the "
                              "model here, but the recipe gives only teacher.url (a served teacher answers log-probs, "
                              "it does not generate); use data.source=text|jsonl|hf with data.path, or give "
                              "teacher.path as well.")
        for i, m in enumerate(self.methods):
            b = methods.get(m.name, "llm").builder
            if not b.needs_teacher or getattr(b, "reads_teacher_cache", False):
                continue
            if getattr(b, "reads_aligned_cache", False):
                if not b.reads_aligned(m.params):
                    raise ConfigError(f"methods.{i}.params.hidden_weight: alm's hidden-state term compares the "
                                      "teacher's hidden states, which a served teacher does not send; set "
                                      "hidden_weight: 0, or give teacher.path as well.")
                continue
            if getattr(b, "generates_with_teacher", False):
                raise ConfigError(f"methods.{i}.name: {m.name!r} generates its training text with the teacher, which "
                                  "needs the model here, but the recipe gives only teacher.url (a served teacher "
                                  "answers log-probs, it does not generate); give teacher.path as well, or use a "
                                  "method that reads served targets (token_kd; alm or uld for a student with another "
                                  "tokenizer).")
            raise ConfigError(f"methods.{i}.name: {m.name!r} runs the teacher in this process and cannot read the "
                              "served teacher's targets; give teacher.path as well, or use a method that reads "
                              "served targets (token_kd; alm or uld for a student with another tokenizer) or needs "
                              "no teacher (sft, redi).")
