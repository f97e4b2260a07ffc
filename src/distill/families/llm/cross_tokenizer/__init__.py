"""Cross-tokenizer distillation: byte-offset alignment and the `alm`, `uld` and `hybrid` methods."""
from distill.families.llm.cross_tokenizer import alm, hybrid, uld  # noqa: F401
