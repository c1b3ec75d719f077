"""The calibration suite's machinery: simulated job directories, scenarios, rejection rates.

A :class:`Scenario` writes one simulated sweep (job directories in the results contract:
``config.yaml`` and ``result.json`` per job, plus whatever files a hypothesis reads, such as
``connectivity/`` or ``escape/``) and then runs the report's own tests on it, reading it back
with :func:`~landscope.analysis.collect.collect` exactly as the report does. Each test returns
whether it rejected (or, for a verdict, whether it said the word the scenario must not
produce). :func:`calibrate` repeats a scenario ``R`` times with independent seeds and reports
each test's rejection rate with a Clopper–Pearson 95 % interval.

A scenario marks each of its tests ``"null"`` (the planted truth says the test must not fire:
its rate is a false-positive rate, goal ≤ 5 % within binomial error, i.e. ≤ 6.5 % at R = 200)
or ``"power"`` (an effect of the stated size is planted: its rate is the power) or ``"stress"``:
a world that is null for the tested parameter but breaks an assumption no test with so few
independent units can do without, e.g. a mean difference over 8 seeds whose seed-level
differences are strongly skewed (no test of a mean holds its level for every distribution at a
fixed n: Bahadur & Savage 1956). A stress row is measured, stored and quoted beside the test
("under a stress null: …") so that its limit is visible, but it is not held to the goal.
"""

from __future__ import annotations

import gc
import json
import math
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pandas as pd
import yaml

NULL_LIMIT = 0.065  # the goal: upper end of a binomial interval around 5 % at R = 200


def write_job(sweep: Path, name: str, config: Mapping[str, Any], result: Mapping[str, Any] | None,
              ) -> Path:
    """One job directory: ``config.yaml`` (the composed config) and ``result.json``
    (``status``, ``seed``, ``final``, ``probes``, ``landscape`` as the runner writes them).
    Returns the job directory."""
    job = Path(sweep) / name
    job.mkdir(parents=True, exist_ok=True)
    (job / "config.yaml").write_text(yaml.safe_dump(_plain(config), sort_keys=False))
    if result is not None:
        (job / "result.json").write_text(json.dumps(_plain(result)))
    return job


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def completed(seed: int, final: Mapping[str, Any], probes: Mapping[str, Any] | None = None,
              landscape: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A completed job's ``result.json`` body."""
    return {"status": "completed", "seed": int(seed), "stop_reason": "max_epochs",
            "final": dict(final), "probes": dict(probes or {}), "landscape": dict(landscape or {})}


@dataclass
class Scenario:
    """A named world to simulate and the report tests to run on it.

    - ``simulate(rng, sweep_dir)`` writes one simulated sweep into ``sweep_dir`` (it exists and
      is empty);
    - ``evaluate(sweep_dir)`` runs the report's tests on it (reading it back with ``collect``
      and any loader the report uses) and returns ``{test name: rejected}``; a test that could
      not run returns ``None`` (counted apart, not as a rejection);
    - ``expect`` maps each test name to ``"null"``, ``"power"`` or ``"stress"``;
    - ``effect`` states the planted effect size in words (power scenarios), ``description``
      the world."""

    name: str
    hypothesis: str  # "measures", "H1", "H2", "H3", "H4"
    description: str
    simulate: Callable[[np.random.Generator, Path], None]
    evaluate: Callable[[Path], dict[str, bool | None]]
    expect: dict[str, str]
    effect: str = ""


@dataclass
class Rate:
    scenario: str
    hypothesis: str
    test: str
    kind: str  # null, power or stress
    rejections: int
    runs: int
    failed: int  # datasets on which the test returned None
    rate: float = field(init=False)
    low: float = field(init=False)
    high: float = field(init=False)

    def __post_init__(self) -> None:
        self.rate = self.rejections / self.runs if self.runs else math.nan
        self.low, self.high = binomial_interval(self.rejections, self.runs)

    @property
    def ok(self) -> bool | None:
        """Null tests: the rate is at most :data:`NULL_LIMIT`; power and stress rows: None."""
        return None if self.kind != "null" or not self.runs else self.rate <= NULL_LIMIT


def binomial_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper–Pearson (exact) interval of a binomial proportion k/n.

    >>> low, high = binomial_interval(0, 10)
    >>> low, round(high, 4)
    (0.0, 0.3085)
    >>> binomial_interval(0, 0)
    (nan, nan)
    """
    from scipy import stats

    if n == 0:
        return math.nan, math.nan
    a = (1 - level) / 2
    low = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - a, k + 1, n - k))
    return low, high


def run_scenario(scenario: Scenario, R: int, seed: int = 0, workdir: Path | None = None,
                 progress: Callable[[str], None] | None = None) -> list[Rate]:
    """``R`` independent datasets of ``scenario`` (dataset r uses
    ``numpy.random.default_rng([seed, r])``), each written to a fresh directory, evaluated and
    removed. Returns one :class:`Rate` per test in ``scenario.expect``."""
    counts = {t: [0, 0, 0] for t in scenario.expect}  # rejections, runs, failed
    base = Path(tempfile.mkdtemp(prefix=f"calib-{scenario.name}-", dir=workdir))
    with _frozen_heap(), _removed(base):
        for r in range(R):
            sweep = base / f"r{r}" / scenario.name
            sweep.mkdir(parents=True)
            scenario.simulate(np.random.default_rng([seed, r]), sweep)
            outcome = scenario.evaluate(sweep)
            for test in scenario.expect:
                value = outcome.get(test)
                if value is None:
                    counts[test][2] += 1
                else:
                    counts[test][0] += bool(value)
                    counts[test][1] += 1
            shutil.rmtree(base / f"r{r}", ignore_errors=True)
            if progress:
                progress(f"{scenario.name}: {r + 1}/{R}")
    return [Rate(scenario.name, scenario.hypothesis, t, scenario.expect[t], *counts[t])
            for t in scenario.expect]


@contextmanager
def _removed(path: Path) -> Iterator[None]:
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _frozen_heap() -> Iterator[None]:
    """Leave the objects alive before a scenario's loop out of garbage collection while it
    runs (``gc.freeze``). The loop makes many short-lived containers; every collection would
    otherwise traverse the whole heap (torch, pandas, scipy and, in a test process, every
    earlier test's objects; the speed-up: docs/measurements.md#analysis-calibration).
    Nothing is leaked: the frozen objects are alive anyway."""
    already = gc.get_freeze_count() > 0
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        if not already:
            gc.unfreeze()


def calibrate(scenarios: list[Scenario], R: int, seed: int = 0,
              progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Every scenario's rates as one table: scenario, hypothesis, test, kind, rejections, runs,
    failed, rate, low, high (Clopper–Pearson 95 %), ok (null tests: rate ≤ 6.5 %), seconds."""
    rows = []
    for sc in scenarios:
        start = time.perf_counter()
        rates = run_scenario(sc, R, seed, progress=progress)
        seconds = time.perf_counter() - start
        for rate in rates:
            rows.append({"scenario": rate.scenario, "hypothesis": rate.hypothesis,
                         "test": rate.test, "kind": rate.kind, "rejections": rate.rejections,
                         "runs": rate.runs, "failed": rate.failed, "rate": rate.rate,
                         "low": rate.low, "high": rate.high, "ok": rate.ok,
                         "effect": sc.effect, "description": sc.description,
                         "seconds": seconds})
    return pd.DataFrame(rows)
