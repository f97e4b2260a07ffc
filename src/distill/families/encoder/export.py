"""Students out as sentence-transformers folders, so that `SentenceTransformer(folder).encode(texts)`
gives the embeddings evaluated here, and back in with `load_encoder(folder)`.

A transformer student is written as

    config.json, model.safetensors, tokenizer files   the transformers model (save_pretrained)
    sentence_bert_config.json                        max_seq_length (the run's data.max_length)
    modules.json                                     Transformer -> Pooling [-> Dense ...] [-> Normalize]
    1_Pooling/config.json                            the pooling mode(s)
    2_Dense/ ...                                     the teacher folder's Dense modules and the student's head
                                                     (a Dense with the identity activation)
    N_Normalize/                                     when the student L2-normalises (as its teacher does)

a static student as a `StaticEmbedding` (model.safetensors with `embedding.weight`, tokenizer.json)
followed by the same Dense / Normalize modules, and also, with `save_model2vec`, in model2vec's
format (`StaticModel.from_pretrained(folder)`; sentence-transformers reads that folder too).
`distill_encoder.json` records what sentence-transformers has no place for (which Dense is the trainable head; a classification head, saved in
`classifier.safetensors`); sentence-transformers ignores both files.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from distill.errors import DistillError
from distill.families.encoder.models import Dense, SentenceEncoder, StaticEncoder
from distill.families.encoder.pooling import as_modes, MODES
from distill.families.encoder.sources import LEGACY_POOLING_KEYS, load_folder
from distill.registry import register_folder_loader
from distill.utils import atomic_write_text

META = "distill_encoder.json"
CLASSIFIER = "classifier.safetensors"
_ST = "sentence_transformers.models."


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=2))


def _pooling_config(dim: int, pooling: str) -> dict:
    modes = as_modes(pooling)
    cfg: dict = {"word_embedding_dimension": dim}
    if list(modes) == sorted(modes, key=MODES.index) and len(set(modes)) == len(modes):
        # one flag per mode: read by every sentence-transformers version (modes concatenated in this order)
        cfg.update({k: m in modes for k, m in LEGACY_POOLING_KEYS.items()})
    else:  # another order: sentence-transformers >= 6 only
        cfg["pooling_mode"] = list(modes)
    return cfg


def _save_dense(linear: nn.Linear, act: str, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "config.json", {"in_features": linear.in_features, "out_features": linear.out_features,
                                         "bias": linear.bias is not None, "activation_function": act})
    state = {f"linear.{k}": v.detach().cpu().contiguous() for k, v in linear.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))


def _clean_tokenizer_json(tok, path: Path) -> None:
    """tokenizer.json without truncation or padding (a StaticEmbedding reads whole texts)."""
    from tokenizers import Tokenizer

    t = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    t.no_truncation()
    t.no_padding()
    t.save(str(path))


def save_encoder(model: nn.Module, folder: str | os.PathLike, tok, max_seq_length: int,
                 classes: list[str] | None = None) -> Path:
    """Write `model` (a SentenceEncoder, StaticEncoder, or a TextClassifier around one) and its
    tokenizer as a sentence-transformers folder; returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta: dict = {"format": 1}
    if hasattr(model, "classifier") and hasattr(model, "encoder"):  # TextClassifier: the head beside the encoder
        save_file({k: v.detach().cpu().contiguous() for k, v in model.classifier.state_dict().items()},
                  str(folder / CLASSIFIER))
        meta["classes"] = classes or [str(i) for i in range(model.classifier.out_features)]
        model = model.encoder
    modules = []
    if isinstance(model, SentenceEncoder):
        model.backbone.save_pretrained(str(folder))
        tok.save_pretrained(str(folder))
        _write_json(folder / "sentence_bert_config.json", {"max_seq_length": int(max_seq_length), "do_lower_case": False})
        modules.append({"type": _ST + "Transformer", "path": ""})
        _write_json(folder / "1_Pooling" / "config.json", _pooling_config(model.config.hidden_size, model.pooling))
        modules.append({"type": _ST + "Pooling", "path": "1_Pooling"})
        dense = [(d.linear, d.activation_function) for d in model.dense]
        meta["kind"] = "transformer"
    elif isinstance(model, StaticEncoder):
        if not getattr(tok, "is_fast", False):
            raise DistillError("a static student is saved as a sentence-transformers StaticEmbedding, which needs a "
                               "fast (tokenizers) tokenizer; the teacher's tokenizer is not one.")
        save_file({"embedding.weight": model.embed.weight.detach().cpu().contiguous()}, str(folder / "model.safetensors"))
        tok.save_pretrained(str(folder))
        _clean_tokenizer_json(tok, folder / "tokenizer.json")
        modules.append({"type": _ST + "StaticEmbedding", "path": ""})
        dense = []
        meta["kind"] = "static"
    else:
        raise DistillError(f"save_encoder: cannot save a {type(model).__name__} as a sentence-transformers folder.")
    if model.head is not None:
        dense.append((model.head, "torch.nn.modules.linear.Identity"))
    meta["head"] = model.head is not None
    for linear, act in dense:
        path = f"{len(modules)}_Dense"
        _save_dense(linear, act, folder / path)
        modules.append({"type": _ST + "Dense", "path": path})
    if model.normalize:
        path = f"{len(modules)}_Normalize"
        (folder / path).mkdir(exist_ok=True)
        modules.append({"type": _ST + "Normalize", "path": path})
    _write_json(folder / "modules.json", [{"idx": i, "name": str(i), **m} for i, m in enumerate(modules)])
    _write_json(folder / "config_sentence_transformers.json", {"prompts": {}, "default_prompt_name": None,
                                                               "similarity_fn_name": "cosine"})
    _write_json(folder / META, meta)
    return folder


def static_table(model: StaticEncoder) -> torch.Tensor:
    """The token table with the student's linear head folded in: the mean of rows E W^T + b is the
    head applied to the mean of rows E, so the table alone gives the same sentence embeddings."""
    w = model.embed.weight.detach().float().cpu()
    if model.head is not None:
        w = w @ model.head.weight.detach().float().cpu().t()
        if model.head.bias is not None:
            w = w + model.head.bias.detach().float().cpu()
    return w.contiguous()


def save_model2vec(model: nn.Module, folder: str | os.PathLike, tok, *, max_length: int | None = 512,
                   dtype: torch.dtype = torch.float32) -> Path:
    """Write a static student in model2vec's format: model.safetensors (`embeddings`, (V, D), the
    head folded in), tokenizer.json, config.json (`model_type: model2vec`, `normalize`, ...) and a
    modules.json, so that `model2vec.StaticModel.from_pretrained(folder)` and
    `SentenceTransformer(folder)` both load it. Like model2vec, a text is tokenized without the
    special tokens; model2vec also leaves [UNK] out of the mean (rare with subword vocabularies).
    `max_length`: tokens per text in `encode` (model2vec's default 512; None: no limit)."""
    from safetensors.torch import save_file

    if hasattr(model, "classifier") and hasattr(model, "encoder"):
        model = model.encoder
    if not isinstance(model, StaticEncoder):
        raise DistillError(f"save_model2vec: a {type(model).__name__} is not a static (embedding-bag) model; "
                           "model2vec's format holds a token table only.")
    if not getattr(tok, "is_fast", False):
        raise DistillError("save_model2vec: the model2vec format needs a fast (tokenizers) tokenizer.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = static_table(model).to(dtype)
    save_file({"embeddings": table}, str(folder / "model.safetensors"))
    _clean_tokenizer_json(tok, folder / "tokenizer.json")
    _write_json(folder / "config.json", {
        "model_type": "model2vec", "architectures": ["StaticModel"], "tokenizer_name": getattr(tok, "name_or_path", ""),
        "apply_pca": None, "sif_coefficient": None, "hidden_dim": int(table.shape[1]), "seq_length": 1000000,
        "normalize": bool(model.normalize), "pooling": "mean", "max_length": max_length,
        "embedding_dtype": str(dtype).removeprefix("torch.")})
    modules = [{"idx": 0, "name": "0", "path": ".", "type": _ST + "StaticEmbedding"}]
    if model.normalize:
        (folder / "1_Normalize").mkdir(exist_ok=True)
        modules.append({"idx": 1, "name": "1", "path": "1_Normalize", "type": _ST + "Normalize"})
    _write_json(folder / "modules.json", modules)
    return folder


@register_folder_loader("modules.json")  # `distill.load_student` on a sentence-transformers folder
def load_encoder(folder: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The model `save_encoder` wrote (or any sentence-transformers folder), in eval mode: a
    SentenceEncoder or StaticEncoder, or a TextClassifier when the folder has a classification head.
    Its forward is `model(input_ids, attention_mask)["embedding"]` (and `["logits"]`)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "modules.json").is_file():
        raise DistillError(f"{folder}: no modules.json; not a sentence-transformers folder.")
    meta = json.loads((folder / META).read_text()) if (folder / META).is_file() else {}
    model = load_folder(folder, "student")
    if isinstance(model, SentenceEncoder):
        model.source = "student"
        if meta.get("head"):  # the last Dense was the student's trainable head
            last = model.dense[-1]
            model.dense = nn.ModuleList(list(model.dense)[:-1])
            model.head = last.linear
    if "classes" in meta:
        from distill.families.encoder.task import TextClassifier

        state = load_file(str(folder / CLASSIFIER))
        clf = TextClassifier(model, len(meta["classes"]), dim=int(state["weight"].shape[1]))
        clf.classifier.load_state_dict(state)
        clf.classes = list(meta["classes"])
        model = clf
    return model.to(device).eval()


__all__ = ["Dense", "load_encoder", "save_encoder", "save_model2vec", "static_table"]
