"""Run cards and plots."""
