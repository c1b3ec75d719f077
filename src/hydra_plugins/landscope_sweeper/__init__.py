"""Hydra sweeper plugin for landscope (``hydra/sweeper=landscope``)."""
