"""Calibration scenarios of H1 as a mediation claim (batch size → λmax → test error; issue #16
items 3 and 6–8).

Each dataset is a simulated sweep in the results contract: one job directory per (batch size,
[learning rate,] seed) with ``config.yaml`` nested as the runner writes it (``seed``,
``train.batch_size``, ``train.target_train_loss`` = 0.1, ``optimizer.name``/``lr``, ``model``) and
a ``result.json`` (status completed, ``stop_reason`` = ``target_train_loss``, ``final`` with
train loss/accuracy, test accuracy, gap and epoch, ``probes.lambda_max``). :func:`evaluate`
reads it back with :func:`~landscope.analysis.collect.collect` and calls
:func:`~landscope.analysis.hypotheses.h1.h1_test` on ``collect(...).included``, exactly what the
report's H1 section calls, with ``n_boot`` = 500 bootstrap draws instead of the section's 2000
(to keep a dataset near 0.1 s).

The world (:func:`simulate`), with L = log2(batch/16) and R = log2(lr/0.1):

- λmax = 4.7 + a·L − d·R + u_s + N(0, 0.6²), u_s ~ N(0, 1) a seed effect shared by every
  batch size (and learning rate) of seed s;
- train loss ~ U(0.09, 0.1) (every job at the target 0.1);
- test error = 0.30 + b·(λmax − 10) + c·L + v_s + N(0, 0.006²) + 0.5·(train loss − 0.095),
  v_s ~ N(0, 0.01²) a seed effect.

The numbers follow the measured h1_batch sweep (λmax 4.7 at batch 16, +3.0 per doubling; test
error 0.30–0.35). Designs: ``batch`` = the h1_batch preset (batch 16…256 × 6 seeds, lr fixed,
30 jobs); ``lr`` = the h1_mediation preset (batch 16, 64, 256 × lr 0.05, 0.1, 0.2 × 6
seeds, 54 jobs, d = 2: a doubling of the learning rate lowers λmax by 2).

Tests (the names :data:`landscope.analysis.hypotheses.h1.TESTS` quotes in the report):
``H1 supported`` (the verdict says supported), ``H1 step a`` (CR2 p of a < 0.05),
``H1 b′`` (CR2 p of b′ < 0.05), ``H1 direct`` (CR2 p of c′ < 0.05), ``H1 indirect`` (the
indirect effect's interval excludes 0, either side) and ``H1 not supported`` (the verdict).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from landscope.analysis.calibration.core import Scenario, completed, write_job

SEEDS = 6
BATCH = {"batch": (16, 32, 64, 128, 256), "lr": (16, 64, 256)}
LRS = {"batch": (0.1,), "lr": (0.05, 0.1, 0.2)}
N_BOOT = 500
A, B, C, D = 3.0, 0.004, 0.0125, 2.0  # the planted sizes


def simulate(rng: np.random.Generator, sweep: Path, a: float = 0.0, b: float = 0.0,
             c: float = 0.0, design: str = "batch", n_seeds: int = SEEDS) -> None:
    """One simulated sweep (module docstring): ``a`` λmax per doubling of the batch size,
    ``b`` test error per unit λmax, ``c`` direct test error per doubling; ``design`` "batch"
    (lr fixed) or "lr" (λmax also moved by the learning rate, d = 2 per doubling of lr)."""
    d = D if design == "lr" else 0.0
    for s in range(n_seeds):
        u, v = rng.normal(0.0, 1.0), rng.normal(0.0, 0.01)
        for batch in BATCH[design]:
            for lr in LRS[design]:
                L, R = np.log2(batch / 16), np.log2(lr / 0.1)
                lam = 4.7 + a * L - d * R + u + rng.normal(0.0, 0.6)
                tl = rng.uniform(0.09, 0.1)
                err = (0.30 + b * (lam - 10.0) + c * L + v + rng.normal(0.0, 0.006)
                       + 0.5 * (tl - 0.095))
                config = {"seed": s, "name": "h1_calibration",
                          "train": {"batch_size": batch, "target_train_loss": 0.1,
                                    "epochs": 400},
                          "optimizer": {"name": "sgd", "lr": lr},
                          "model": {"name": "mlp", "width": 128, "depth": 3}}
                result = completed(s, final={"train_loss": tl, "train_acc": 0.97,
                                             "test_acc": 1.0 - err,
                                             "generalization_gap": 0.97 - (1.0 - err),
                                             "epoch": 30},
                                   probes={"lambda_max": lam})
                result["stop_reason"] = "target_train_loss"
                name = f"optimizer.lr={lr},seed={s},train.batch_size={batch}"
                write_job(sweep, name, config, result)


def evaluate(sweep: Path) -> dict[str, bool | None]:
    """The report's H1 test on one simulated sweep: ``{test: rejected}``."""
    from landscope.analysis.collect import collect
    from landscope.analysis.hypotheses.h1 import NOT_SUPPORTED, SUPPORTED, h1_test

    res = h1_test(collect(sweep).included, n_boot=N_BOOT)
    out: dict[str, bool | None] = {"H1 supported": res.verdict == SUPPORTED,
                                   "H1 not supported": res.verdict == NOT_SUPPORTED}
    fit = res.fit
    if fit is None:
        out.update({t: None for t in ("H1 step a", "H1 b′", "H1 direct", "H1 indirect")})
        return out
    out.update({"H1 step a": bool(fit.a.p < 0.05), "H1 b′": bool(fit.b.p < 0.05),
                "H1 direct": bool(fit.direct.p < 0.05),
                "H1 indirect": fit.indirect.sign != 0})
    return out


def _scenario(name: str, description: str, expect: dict[str, str], effect: str = "",
              **world) -> Scenario:
    return Scenario(name=name, hypothesis="H1", description=description,
                    simulate=partial(simulate, **world), evaluate=evaluate, expect=expect,
                    effect=effect)


def scenarios() -> list[Scenario]:
    """Null, direct-effect-only and chain worlds, for the batch-only and the lr-varied design."""
    null, power = "null", "power"
    all_null = {t: null for t in ("H1 supported", "H1 step a", "H1 b′", "H1 direct",
                                  "H1 indirect")}
    direct_only = {"H1 supported": null, "H1 indirect": null, "H1 b′": null,
                   "H1 step a": power, "H1 direct": power, "H1 not supported": power}
    chain = {"H1 supported": power, "H1 indirect": power, "H1 b′": power, "H1 step a": power,
             "H1 direct": null, "H1 not supported": null}
    sizes = f"a = {A:g} λmax per doubling"
    out = []
    for design, words in (("batch", "batch 16-256 x 6 seeds, lr fixed (h1_batch)"),
                          ("lr", "batch 16-256 (x4) x lr 0.05-0.2 x 6 seeds (h1_mediation)")):
        tag = "" if design == "batch" else "_lr"
        if design == "batch":
            out.append(_scenario(
                "h1_null", f"{words}: batch size moves neither λmax nor test error; seed "
                "effects in both", all_null, design=design))
        else:
            out.append(_scenario(
                "h1_lr_null", f"{words}: only the learning rate moves λmax; λmax and batch "
                "size do not move test error; seed effects in both",
                {t: null for t in ("H1 supported", "H1 b′", "H1 direct", "H1 indirect")},
                design=design))
        out.append(_scenario(
            f"h1{tag}_direct_only", f"{words}: batch size raises λmax and test error "
            "directly; λmax has no effect on test error (the chain is false)", direct_only,
            f"{sizes}, c′ = {C:g} test error per doubling, b′ = 0", a=A, c=C, design=design))
        out.append(_scenario(
            f"h1{tag}_chain", f"{words}: test error depends on λmax only (the chain is true)",
            chain, f"{sizes}, b′ = {B:g} test error per unit λmax (a·b′ = {A * B:g} per "
            "doubling), c′ = 0", a=A, b=B, design=design))
    return out
