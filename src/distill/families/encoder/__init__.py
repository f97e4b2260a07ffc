"""Encoder family: text encoders and sentence-embedding models (any Hugging Face or
sentence-transformers encoder as the teacher -> a smaller encoder of its class, or a static
embedding-bag student; students saved as sentence-transformers folders). Importing registers
config, methods and runner; transformers is imported lazily inside functions."""
from distill.families.encoder import (attention_kd, config, cross_encoder_kd, embedding_kd, hidden_mse,  # noqa: F401
                                      logits, margin_mse, mi_alpha, minilm_relations, parallel_mse, runner, scratch)
