"""Slurm orchestrator for Megatron-style functional (regression) tests."""

__version__ = "0.1.0"
