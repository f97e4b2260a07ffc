"""LLM family: teacher LM -> student LM. Importing registers config, methods and runner.

transformers is imported lazily (inside functions), so `distill list` works without it.
"""
from distill.families.llm import config, first, on_policy, redi, runner, seq_kd, sft, token_kd  # noqa: F401
from distill.families.llm import cross_tokenizer  # noqa: F401,E402
