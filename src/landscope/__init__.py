"""landscope: loss-landscape geometry for deep-learning research."""

__version__ = "0.1.0"
