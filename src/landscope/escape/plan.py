"""The line ``runner.escape`` logs before a job's continuations: how many it will run and, at
most, how long they take.

A continuation stops when it escapes, so its length is not known in advance; the plan gives
the ceiling, every run censored at ``max_steps``: ``max_steps`` steps and an evaluation every
``eval_every`` of them (:func:`~landscope.escape.dynamics.run_escape`). A step and an
evaluation are timed the way a continuation runs them, by :func:`step_seconds`: short runs of
:func:`~landscope.escape.dynamics.run_escape` itself at a step size too small to move the
loss, whose differences separate a step from an evaluation and from the run's setup (the
model's copy and the evaluation subset, paid once a continuation). Plain
SGD's step is timed for every batch size (its mini-batch sets the cost); the injected-noise
modes take a full-batch gradient whatever the batch size, so theirs is timed once.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

TIMING_LR = 1e-12  # a step this small leaves the loss where it is: no run escapes early
# the shortest timing run aimed at (fast models take more steps in it); the plan's accuracy
# and cost: docs/measurements.md#escape-plan
TIMING_S = 0.03
MAX_STEPS = 64  # ... up to this many


def step_seconds(model: Any, train_split: Any, *, batch_size: int, noise: str, settings: dict,
                 extra: dict, known: Optional[tuple[float, float]] = None
                 ) -> tuple[float, float, float]:
    """``(seconds of a continuation's setup, of one step, of one evaluation)`` for ``model``
    (left untouched) at ``batch_size`` with ``noise``, as
    :func:`~landscope.escape.dynamics.run_escape` runs them under ``settings`` (``eval_size``,
    ``eval_seed``) and ``extra`` (``sigma_trace``, ``basis``:
    :func:`landscope.escape.jobs._noise_inputs`). From short runs, the fastest of two each: s
    and 2s steps with one evaluation at the end, and s steps with an evaluation after each,
    s set so that a run takes about :data:`TIMING_S` (2 to :data:`MAX_STEPS`). The setup (the
    model's copy, the evaluation subset) is what the first run took beyond its steps and its
    two evaluations (at step 0 and at its end). ``known``: ``(setup, evaluation)`` timed
    before (neither depends on the batch size), so that only the step is timed. Where the
    timing's noise swamps a difference (the longer run no slower), the step or the evaluation
    is its run's time over its steps or evaluations: an upper bound, never 0."""
    from landscope.escape.dynamics import EscapeRule, run_escape

    rule = EscapeRule(delta_abs=1e300)  # nothing counts as an escape

    def timed(steps: int, every: int, repeats: int = 2) -> float:
        best = math.inf
        for _ in range(repeats):
            tic = time.perf_counter()
            run_escape(model, train_split, lr=TIMING_LR, batch_size=batch_size,
                       max_steps=steps, eval_every=every, rule=rule,
                       eval_size=settings["eval_size"], eval_seed=settings["eval_seed"],
                       noise=noise, sigma_trace=extra.get("sigma_trace"),
                       noise_basis=extra.get("basis") if noise == "topk" else None)
            best = min(best, time.perf_counter() - tic)
        return best

    first = timed(2, 2, repeats=1)  # warms the caches up, and sizes the runs
    short = max(2, min(MAX_STEPS, math.ceil(2 * TIMING_S / max(first, 1e-9))))
    one, two = timed(short, short), timed(2 * short, 2 * short)
    # a difference the timing's noise swamped (a loaded host) falls back to an upper bound:
    # the whole run over its steps (evaluations), rather than reading 0
    step = (two - one) / short if two > one else two / (2 * short)
    if known is not None:
        return known[0], step, known[1]
    each = timed(short, 1)
    evaluation = (each - one) / (short - 1) if each > one else each / (short + 1)
    return max(0.0, one - short * step - 2 * evaluation), step, evaluation


def plan(model: Any, train_split: Any, settings: dict, extra: dict,
         todo: dict[tuple[str, int], int]) -> dict[str, Any]:
    """The plan of the continuations still to run: ``todo`` counts them by (noise, batch
    size); each (noise, batch size) is timed once (the injected noises once each)."""
    timings: dict[tuple[str, int], tuple[float, float, float]] = {}
    seconds = 0.0
    evals = 1 + math.ceil(settings["max_steps"] / settings["eval_every"])  # with step 0's
    for (noise, b), count in todo.items():
        if not count:
            continue
        key = (noise, b if noise == "sgd" else 0)
        if key not in timings:
            first = next(iter(timings.values()), None)
            timings[key] = step_seconds(model, train_split, batch_size=b, noise=noise,
                                        settings=settings, extra=extra,
                                        known=None if first is None else (first[0], first[2]))
        setup, step, evaluation = timings[key]
        seconds += count * (setup + settings["max_steps"] * step + evals * evaluation)
    return {"timings": timings, "seconds": seconds}


def plan_line(name: str, settings: dict, noises: list[str], total: int, stored: int,
              timings: dict[tuple[str, int], tuple[float, float, float]], seconds: float,
              eval_samples: int) -> str:
    """The line said before ``name``'s continuations (:func:`plan`'s ``timings`` and
    ``seconds``; ``stored``: those a partial file holds, read back)."""
    from landscope.wording import figure

    s = settings
    counts = " × ".join(_count(n, word) for n, word in (
        (len(noises), "noise type"), (len(s["lrs"]), "learning rate"),
        (len(s["batch_sizes"]), "batch size"), (len(s["seeds"]), "seed")))
    be = "is" if stored == 1 else "are"
    kept = f"; {stored} stored by an interrupted run {be} read back" if stored else ""
    line = (f"escape plan, {name}: {total - stored} of {total} continuations to run "
            f"({counts}{kept})")
    if not timings:
        return line
    steps = [f"~{figure(step * 1e3)} ms a step"
             + (f" at B={b}" if noise == "sgd" and b else f" with {noise} noise")
             for (noise, b), (_, step, _) in sorted(timings.items())]
    evaluation = next(iter(timings.values()))[2]  # timed once a job (step_seconds' known)
    return (f"{line}, each at most {s['max_steps']} steps with the loss on {eval_samples} "
            f"samples every {s['eval_every']}; {', '.join(steps)}, "
            f"~{figure(evaluation * 1e3)} ms an evaluation, so at most ~{figure(seconds)} s "
            "(a continuation stops when it escapes)")


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def planned(job: dict, settings: dict, full: dict, extra: dict, done: dict, model: Any,
            data: Any, cell: Callable[..., tuple], log: Callable[[str], None]) -> int:
    """Log the plan of ``job``'s continuations (``done``: those a partial file holds, by
    ``cell``; ``full``: the settings with the later ones at their defaults); returns how many
    continuations the settings make."""
    noises, todo, total = list(full["noise"]), {}, 0
    for noise in noises:
        for b in settings["batch_sizes"]:
            for lr in settings["lrs"]:
                for seed in settings["seeds"]:
                    total += 1
                    if cell(lr, b, seed, noise) not in done:
                        todo[noise, int(b)] = todo.get((noise, int(b)), 0) + 1
    p = plan(model, data.train, full, extra, todo)
    n = len(data.train)
    n_eval = n if full["eval_size"] is None else min(int(full["eval_size"]), n)
    log(plan_line(job["name"], full, noises, total, total - sum(todo.values()), p["timings"],
                  p["seconds"], n_eval))
    return total
