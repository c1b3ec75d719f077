"""Mode connectivity over a finished sweep: ``python -m runner.connect SWEEP_DIR [overrides]``.

Finds the completed jobs of ``SWEEP_DIR`` (``*/result.json`` with status ``completed``),
groups those whose configs are identical apart from ``seed`` (the job's ``config.yaml``
compared with the exclusions of the job fingerprint), and connects every pair of seeds
within a group, from their final checkpoints:

* the straight line between the two parameter vectors (BatchNorm per ``landscape.bn``:
  ``keep`` interpolates the two models' running statistics, ``recompute`` re-estimates
  them at every point on the train subset);
* with ``landscape.bezier.enabled=true``, a quadratic Bezier curve whose bend is trained
  (Garipov et al. 2018) for ``landscape.bezier.epochs`` epochs over the job's training
  split, with the job's ``train.batch_size``, Adam at ``landscape.bezier.lr`` (cosine
  decay) and t ~ U[0, 1] per batch seeded by ``landscape.seed``; BatchNorm statistics are
  always re-estimated at every point of the curve.

Both are evaluated at ``landscape.path_points`` evenly spaced t in [0, 1] (ends exact) on
seeded subsets of the train and test splits (``landscape.data_size`` samples each, seed
``landscape.seed``, ``landscape.batch_size`` samples per forward pass).

Overrides set the landscape config as for the runner (default ``landscape=basic``), e.g.
``landscape.path_points=11 landscape.bezier.enabled=false landscape.bezier.epochs=5
landscape.bn=recompute``; only ``landscape`` keys are accepted.

Output per pair (written atomically), in ``SWEEP_DIR/connectivity/<group>/``, where
``<group>`` is the job directory name without its ``seed=N`` item:

* ``<jobA>__<jobB>.json``: ``scalars`` (``linear_*`` and ``bezier_*``: barriers against the
  endpoint mean and against the endpoint interpolation, max, its t, mean, integral, start
  and end of loss and error on train and test; see ``landscope.geometry.connectivity``),
  the ``landscape`` settings used (the cache key: ``path_points``, ``bezier``,
  ``bezier_epochs``, ``bezier_lr``, ``bn``, ``data_size``, ``seed``, ``batch_size``, named
  as before ``landscape.bezier.*`` was a group, so cached pairs stay valid), the
  checkpoints' SHA-256 digests and epochs, the bend's training record;
* ``<jobA>__<jobB>.npz``: ``linear_t``, ``linear_train_loss``, ``linear_train_acc``,
  ``linear_test_loss``, ``linear_test_acc``, the same with ``bezier_``, ``bezier_bend``
  (the bend as a flat parameter vector) and ``bezier_loss_history``.

A pair whose JSON file already holds the same checkpoint digests and settings is not
recomputed.  Before any pair runs, one plan line per group: its pairs, those cached, each
pair's path points and bend steps and about how long they take (one pair of the group timed:
two points of each path twice, seven bend steps). With ``landscape.progress`` (default: on a
terminal) each path's points and the bend's steps get a tqdm bar. One line per pair, then a
summary.  Exit codes: 0 all pairs done, 1 a pair failed (the others still ran), 2 bad input
(not a sweep directory, no pairs to connect, an unknown or non-landscape override, an output
directory that cannot be written, checked before anything is computed): one ``error:`` line
on stderr; 130 interrupted (the same command resumes).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from landscope.errors import LandscopeError
from landscope.geometry.pairs import KEYS, plan_lines, plan_pairs, run_pair, summary, validate
from landscope.progress import wanted
from landscope.settings import only_group
from landscope.wording import counted


def _landscape_config(overrides: list[str]) -> tuple[dict, bool]:
    """The connectivity settings: the landscape group (default ``landscape=basic``) composed
    with the overrides as the runner would, its :data:`KEYS` (under their cache-key names),
    checked; and whether to show bars (``landscape.progress``)."""
    from runner.cli import group_config

    only_group(overrides, "landscape", "landscape.path_points=11", group_choice=True)
    if not any(o.startswith("landscape=") for o in overrides):
        overrides = ["landscape=basic", *overrides]
    c = OmegaConf.create(OmegaConf.to_container(group_config("landscape", overrides),
                                                resolve=True, enum_to_str=True))
    settings = {k: OmegaConf.select(c, path) for k, path in KEYS.items()}
    validate(settings)
    return settings, wanted(c.progress)


def main(argv: list[str] | None = None) -> None:
    from runner.cli import (
        arguments,
        check_writable,
        input_errors,
        paths_and_overrides,
        resumable,
        run_each,
    )

    args = arguments(argv, __doc__)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    paths, overrides = paths_and_overrides(args)
    with input_errors(composing=True):
        if len(paths) != 1:
            raise LandscopeError(f"expected one sweep directory, got {len(paths)}: "
                                 f"{' '.join(paths) or '(none)'}")
        settings, progress = _landscape_config(overrides)
        sweep = Path(paths[0])
        pairs, notes = plan_pairs(sweep)
        check_writable(sweep / "connectivity" / g for g in sorted({p["group"] for p in pairs}))
    for note in notes:
        print(note, flush=True)
    with resumable():
        for line in plan_lines(pairs, settings, sweep / "connectivity"):
            print(line, flush=True)
    counts = run_each(pairs, lambda p: f"{p['group']}/{p['a']['name']}__{p['b']['name']}",
                      lambda p: run_pair(p, settings, sweep / "connectivity", progress),
                      lambda record: summary(record["scalars"]))
    print(f"{counted(len(pairs), 'pair')}: {counts['computed']} computed, "
          f"{counts['cached']} cached, {counts['failed']} failed ({sweep / 'connectivity'})")
    sys.exit(1 if counts["failed"] else 0)


if __name__ == "__main__":
    main()
