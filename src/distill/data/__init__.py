"""Registered data sets. Importing this package registers them."""
from distill.data import digits, fashion_mnist, image_folder, streamed  # noqa: F401
from distill.data.base import ArrayDataset, BatchSampler, DataBundle, TensorLoader

__all__ = ["ArrayDataset", "BatchSampler", "DataBundle", "TensorLoader"]
