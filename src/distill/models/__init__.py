"""Registered model builders. A builder takes `input_shape`, `num_classes` and its own params."""
from distill.models import convnet, mlp, resnet_cifar  # noqa: F401
from distill.models.io import build_model, count_parameters, load_model, save_model

__all__ = ["build_model", "count_parameters", "load_model", "save_model"]
