"""Metrics shared by families: classification quality, calibration, size and speed."""
from distill.eval.metrics import classification_metrics, ece, reliability_bins
from distill.eval.efficiency import cpu_latency_ms, size_on_disk

__all__ = ["classification_metrics", "cpu_latency_ms", "ece", "reliability_bins", "size_on_disk"]
