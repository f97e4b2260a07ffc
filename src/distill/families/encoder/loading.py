"""Models and tokenizers by path, hub id or `package:NAME` (the recipe's `teacher.path` and
`student.path`): resolved by `sources.resolve`, then loaded as `sources` reads each format."""
from __future__ import annotations

from torch import nn

from distill.families.encoder.sources import load_folder, load_transformer, package_folder, resolve, transformer_dir
from distill.families.encoder.sources import load_tokenizer as _load


def resolve_path(path: str) -> str:
    """`package:NAME` -> the model folder a Python package ships; else as is (see `sources.resolve`)."""
    return package_folder(path, "teacher.path") if path.startswith("package:") else path


def load_backbone(path: str, what: str = "teacher.path") -> nn.Module:
    """The transformers model of a folder, hub id or package (of a sentence-transformers folder: its
    Transformer module)."""
    return load_transformer(transformer_dir(resolve(path, what)), what)


def load_tokenizer(path: str, what: str = "teacher.path"):
    return _load(resolve(path, what), what)


def load_encoder_source(path: str, what: str = "teacher.path", pooling: str | None = None,
                        normalize: bool | None = None) -> nn.Module:
    """A whole sentence encoder from a sentence-transformers folder (its own pooling, Dense and
    Normalize modules) or a transformers folder (`pooling`, default mean); `pooling`/`normalize`
    given here override the folder's."""
    return load_folder(resolve(path, what), what, pooling=pooling, normalize=normalize)
