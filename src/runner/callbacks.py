"""Hydra callbacks of the runner."""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class CheckInputs(Callback):
    """Check a single run's config and data before Hydra creates its output directory,
    so bad input leaves nothing behind (multiruns are checked by the landscope sweeper).

    Hydra turns exceptions raised by callbacks into warnings and carries on, so a
    failed check prints its one line and exits here (SystemExit passes through)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from landscope.errors import LandscopeError
        from landscope.jobs import check_inputs

        try:
            check_inputs(config)
        except LandscopeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
