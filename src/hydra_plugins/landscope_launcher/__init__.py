"""Hydra launcher plugin for landscope (``hydra/launcher=parallel``)."""
