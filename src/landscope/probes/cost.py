"""What a probe run costs, and the caps that bound it.

A :class:`ProbeLedger` watches one probe run: the Hessian operator's product counter, the
sharpness objective's loss and gradient counters and the wall clock. Each estimator runs
inside :meth:`ProbeLedger.stage`, which records its seconds, products and evaluations
(``probe_cost``: {estimator: {seconds, products, loss_evals, grad_evals}}) and shows a tqdm
bar of its products when asked. The caps ``max_products`` (Hessian-vector products over the
whole run) and ``budget_s`` (wall seconds since the run started) are checked through
:meth:`ProbeLedger.stop`, which the estimators call once per product: it returns the name of
the cap that is spent (``"max_products"`` or ``"budget_s"``) and the estimator stops there,
reports what it has and records ``<estimator>_stopped_by``. Nothing is cut silently.

The plan (:meth:`ProbeLedger.plan`) is the number of products each switched-on estimator may
spend at most (its own caps: Lanczos iterations, trace samples, SLQ probes × steps), and the
estimate of the time is that plan times one product timed at the start, after
:func:`warm_autograd` (a process's first product with ``grad_outputs`` imports part of
torch: about 0.45 s, 45 times a small model's product, in ``runner.probe``) and after the
determinism check's other product, which warms it (docs/measurements.md#probes-plan-product).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Optional

from landscope.progress import bar

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
    bar per estimator. ``log``: where the plan line goes (``None``: nowhere)."""

    counter: Callable[[], int]
    max_products: Optional[int] = None
    budget_s: Optional[float] = None
    progress: bool = False
    log: Optional[Callable[[str], None]] = None
    evals: Callable[[], tuple[int, int]] = lambda: (0, 0)
    started: float = field(default_factory=time.perf_counter)
    stages: dict[str, StageCost] = field(default_factory=dict)
    stopped: dict[str, str] = field(default_factory=dict)
    _bar: Any = None
    _last: int = 0

    def stop(self, products: bool = True) -> Optional[str]:
        """The cap that is spent (``"max_products"``, ``"budget_s"``) or None; also moves the
        current estimator's bar. Estimators call it before each product; ``products=False``
        asks only about the time (work that spends no products)."""
        n = self._advance()
        if products and self.max_products is not None and n >= self.max_products:
            return STOPPED_BY_PRODUCTS
        if self.budget_s is not None and time.perf_counter() - self.started >= self.budget_s:
            return STOPPED_BY_TIME
        return None

    def _advance(self) -> int:
        """Move the current estimator's bar to the products spent so far; their count."""
        n = self.counter()
        if self._bar is not None and n > self._last:
            self._bar.update(n - self._last)
        self._last = n
        return n

    def products_left(self) -> Optional[int]:
        return None if self.max_products is None else max(0, self.max_products - self.counter())

    @contextlib.contextmanager
    def stage(self, name: str, planned: Optional[int] = None) -> Iterator[StageCost]:
        """Record the cost of the block under ``name`` (added to earlier blocks of that name)."""
        cost = self.stages.setdefault(name, StageCost())
        tic, p0, (l0, g0) = time.perf_counter(), self.counter(), self.evals()
        self._last = p0
        if self.progress:
            self._bar = bar(f"probe {name}", planned, unit="hvp")
        try:
            yield cost
        finally:
            if self._bar is not None:
                self._advance()  # the stage's last products onto its bar
                self._bar.close()
                self._bar = None
            l1, g1 = self.evals()
            cost.seconds += time.perf_counter() - tic
            cost.products += self.counter() - p0
            cost.loss_evals += l1 - l0
            cost.grad_evals += g1 - g0

    def record_stop(self, name: str, reason: Optional[str]) -> None:
        if reason is not None:
            self.stopped[name] = reason

    def plan(self, planned: dict[str, int], seconds_per_product: float) -> str:
        """The line printed before probing: products planned per estimator and the time."""
        total = sum(planned.values())
        parts = ", ".join(f"{k} <= {v}" for k, v in planned.items())
        line = (f"probe plan: at most {total} Hessian-vector products ({parts}); "
                f"~{seconds_per_product * 1e3:.1f} ms per product, so up to "
                f"~{total * seconds_per_product:.0f} s plus the sharpness and noise evaluations")
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
