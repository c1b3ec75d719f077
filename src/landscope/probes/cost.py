"""What a probe run costs, and the caps that bound it.

A :class:`ProbeLedger` watches one probe run: the Hessian operator's product counter, the
sharpness objective's loss and gradient counters and the wall clock. Each estimator runs
inside :meth:`ProbeLedger.stage`, which records its seconds, products and evaluations
(``probe_cost``: {estimator: {seconds, products, loss_evals, grad_evals}}) and shows a tqdm
bar of its products (the sharpness measures': their evaluations) when asked. The caps
``max_products`` (Hessian-vector products over the whole run) and ``budget_s`` (wall seconds
since the run started) are checked through
:meth:`ProbeLedger.stop`, which the estimators call once per product: it returns the name of
the cap that is spent (``"max_products"`` or ``"budget_s"``) and the estimator stops there,
reports what it has and records ``<estimator>_stopped_by``. Nothing is cut silently.

The plan (:meth:`ProbeLedger.plan`; :mod:`~landscope.probes.plan`) is the fewest products the
stopping rules allow, the most each switched-on estimator may spend (its own caps: Lanczos
iterations, trace samples, SLQ probes × steps), the usual products (the fewest, with the lists
beyond the top-k and their traces at their medians) and the sharpness measures' usual
evaluations; the estimate of the time is the usual counts times a loss-and-gradient evaluation
and a forward pass timed at the start and one product timed there, after :func:`warm_autograd`
(a process's first product with ``grad_outputs`` imports part of torch: about 0.45 s, 45 times a
small model's product, in ``runner.probe``) and after the determinism check's other product,
which warms it (docs/measurements.md#probes-plan-product).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Optional

from landscope.progress import bar
from landscope.wording import figure

STOPPED_BY_PRODUCTS = "max_products"
STOPPED_BY_TIME = "budget_s"


def warm_autograd(device: Any, dtype: Any) -> None:
    """Run a tiny vector-Jacobian product on ``device`` in ``dtype``, so that the one-time
    work of a process's first one (``torch.autograd.grad`` imports ``torch.fx`` and sympy the
    first time it is given ``grad_outputs``; a device's first kernels) is not counted in a
    product timed for the plan. Costs nothing after the first call."""
    import torch

    x = torch.ones(1, device=device, dtype=dtype, requires_grad=True)
    with torch.enable_grad():
        torch.autograd.grad(x * 2.0, x, grad_outputs=torch.ones_like(x))


@dataclass
class StageCost:
    seconds: float = 0.0
    products: int = 0
    loss_evals: int = 0
    grad_evals: int = 0


@dataclass
class ProbeLedger:
    """Costs per estimator and the caps of one probe run (see the module docstring).

    ``counter()`` returns the products spent so far; ``evals()`` the (loss, gradient)
    evaluations spent outside products (the sharpness family's). ``progress``: show a tqdm
    bar per estimator. ``log``: where the plan line goes (``None``: nowhere). ``agree``: with
    data-parallel ranks, turns this rank's "the time is up" before a product into the ranks'
    common verdict (any rank's), so that every rank stops at the same product; the ranks'
    clocks differ, and a rank that went on alone would wait in a product's all-reduce that
    the others never make."""

    counter: Callable[[], int]
    max_products: Optional[int] = None
    budget_s: Optional[float] = None
    progress: bool = False
    log: Optional[Callable[[str], None]] = None
    evals: Callable[[], tuple[int, int]] = lambda: (0, 0)
    agree: Optional[Callable[[bool], bool]] = None
    started: float = field(default_factory=time.perf_counter)
    stages: dict[str, StageCost] = field(default_factory=dict)
    stopped: dict[str, str] = field(default_factory=dict)
    _bar: Any = None
    _last: int = 0
    _shown: Optional[Callable[[], int]] = None  # what the current stage's bar counts


    def stop(self, products: bool = True, together: Optional[bool] = None) -> Optional[str]:
        """The cap that is spent (``"max_products"``, ``"budget_s"``) or None; also moves the
        current estimator's bar. Estimators call it before each product; ``products=False``
        asks only about the time (work that spends no products). ``together``: whether the
        ranks decide together (``agree``), as they must where the work is a collective; the
        default: for products, not for other work (which each rank does whole, on its own
        clock)."""
        n = self._advance()
        if products and self.max_products is not None and n >= self.max_products:
            return STOPPED_BY_PRODUCTS
        if self.budget_s is not None:
            up = time.perf_counter() - self.started >= self.budget_s
            if (products if together is None else together) and self.agree is not None:
                up = self.agree(up)
            if up:
                return STOPPED_BY_TIME
        return None

    def _advance(self) -> int:
        """Move the current estimator's bar to what it counts; the products spent so far."""
        self.tick()
        return self.counter()

    def tick(self) -> None:
        """Move the current estimator's bar to what it counts (products, or the evaluations a
        stage counts instead); an objective's ``watch`` calls it once per evaluation."""
        if self._bar is None:
            return
        n = (self._shown or self.counter)()
        if n > self._last:
            self._bar.update(n - self._last)
        self._last = n

    def count_also(self, operators: list) -> None:
        """From here count the products of the operators in ``operators`` (appended as they
        start: the blocks', the curvature matrices') with the run's, so that the caps, the bar
        and the costs see them."""
        run_products = self.counter
        self.counter = lambda: run_products() + sum(op.n_matvecs for op in operators)

    def products_left(self) -> Optional[int]:
        return None if self.max_products is None else max(0, self.max_products - self.counter())

    @contextlib.contextmanager
    def stage(self, name: str, planned: Optional[int] = None,
              shown: Optional[Callable[[], int]] = None, unit: str = "hvp"
              ) -> Iterator[StageCost]:
        """Record the cost of the block under ``name`` (added to earlier blocks of that name).
        Its bar counts products of ``planned``, or what ``shown`` counts, in ``unit``s."""
        cost = self.stages.setdefault(name, StageCost())
        tic, p0, (l0, g0) = time.perf_counter(), self.counter(), self.evals()
        self._shown = shown
        self._last = (shown or self.counter)()
        if self.progress:
            self._bar = bar(f"probe {name}", planned, unit=unit)
        try:
            yield cost
        finally:
            if self._bar is not None:
                self.tick()  # the stage's last products onto its bar
                self._bar.close()
                self._bar = None
            self._shown = None
            l1, g1 = self.evals()
            cost.seconds += time.perf_counter() - tic
            cost.products += self.counter() - p0
            cost.loss_evals += l1 - l0
            cost.grad_evals += g1 - g0

    def record_stop(self, name: str, reason: Optional[str]) -> None:
        if reason is not None:
            self.stopped[name] = reason

    def plan(self, planned: dict[str, int], fewest: int, seconds_per_product: Optional[float],
             evaluations: Optional[dict[str, int]] = None,
             eval_seconds: tuple[float, float] = (0.0, 0.0),
             usual_products: Optional[int] = None) -> str:
        """The line printed before probing: the products (``fewest`` to the estimators' caps
        ``planned``; ``usual_products``, :func:`~landscope.probes.plan.usual_products`, where it
        is more than the fewest) at ``seconds_per_product``; the sharpness step's usual
        ``evaluations`` (``{"gradient": n, "forward": n}``,
        :func:`~landscope.probes.plan.sharpness_evaluations`) at ``eval_seconds`` (a loss and
        gradient, a forward pass); the time they make."""
        parts, usual, most = [], 0.0, 0.0
        if planned and seconds_per_product is not None:
            total = sum(planned.values())
            each = ", ".join(f"{k} <= {v}" for k, v in planned.items())
            count = max(fewest, usual_products or 0)
            often = f", usually about {count}" if count > fewest else ""
            parts.append(f"{fewest} to {total} Hessian-vector products ({each}){often}, "
                         f"~{figure(seconds_per_product * 1e3)} ms each")
            usual, most = count * seconds_per_product, total * seconds_per_product
        if evaluations:
            g, f = evaluations.get("gradient", 0), evaluations.get("forward", 0)
            text = f"{g} loss-and-gradient evaluations at ~{figure(eval_seconds[0] * 1e3)} ms"
            if f:
                text += f" and {f} loss or accuracy passes at ~{figure(eval_seconds[1] * 1e3)} ms"
            parts.append(f"the sharpness measures' usual {text}")
            spent = g * eval_seconds[0] + f * eval_seconds[1]
            usual, most = usual + spent, most + spent
        line = f"probe plan: {'; '.join(parts)}; so about ~{figure(usual)} s"
        if "noise" in planned:
            line += " plus the noise step's per-sample gradients"
        if most > usual:
            line += f"; up to ~{figure(most)} s with every estimator at its cap of products"
        caps = [f"max_products={self.max_products}" if self.max_products is not None else "",
                f"budget_s={self.budget_s:g}" if self.budget_s is not None else ""]
        caps = [c for c in caps if c]
        if caps:
            line += f"; capped at {' and '.join(caps)}"
        if self.log is not None:
            self.log(line)
        return line

    def summary(self) -> dict[str, dict[str, float]]:
        return {k: asdict(v) for k, v in self.stages.items()}
