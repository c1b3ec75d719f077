"""landscope: loss-landscape geometry for deep-learning research."""

__version__ = "0.1.0"
__all__ = ["Analyzer"]


def __getattr__(name: str):
    # lazy: ``import landscope`` stays cheap; ``from landscope import Analyzer`` loads torch
    if name == "Analyzer":
        from landscope.analyzer import Analyzer

        return Analyzer
    raise AttributeError(f"module 'landscope' has no attribute {name!r}")
