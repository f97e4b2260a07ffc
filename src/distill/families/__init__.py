"""Families of distillation: each registers its config, methods and runner on import."""
