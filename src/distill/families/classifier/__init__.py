"""Classifier family: teacher net(s) -> student net. Importing registers config, methods and runner."""
from distill.families.classifier import config, dkd, fitnet, kd, runner, scratch  # noqa: F401
