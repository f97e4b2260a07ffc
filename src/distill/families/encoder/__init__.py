"""Encoder family: text encoders and sentence-embedding models (BERT-family teacher -> smaller BERT
or static embedding-bag student). Importing registers config, methods and runner; transformers is
imported lazily inside functions."""
from distill.families.encoder import (attention_kd, config, embedding_kd, hidden_mse, logits, mi_alpha,  # noqa: F401
                                      minilm_relations, runner, scratch)
