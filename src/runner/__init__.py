"""The Hydra app behind ``python -m runner``: compose -> landscope.jobs -> exit code."""
