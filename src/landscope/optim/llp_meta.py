r"""LLP's meta-model: online ridge regression from probe features to the later loss decrease.

At every LLP probe step t (``optimizer.llp.meta=true``) the meta-model forms a feature vector
:math:`x_t` from what the probe just measured and predicts the *relative decrease of the
mini-batch loss* over the next H steps (``horizon``) per unit of the step factor,

.. math::

    y_t = \operatorname{clip}\Big(\frac{L_t - \frac1H\sum_{j=1}^{H} L_{t+j}}
          {\bar f_t\,|L_t|}, -1, 1\Big),

where :math:`L_s` is the mini-batch loss at the parameters before step s, exactly the loss the
training loop computes anyway (handed over by :meth:`MetaModel.observe`, once per step, before
the probe), and :math:`\bar f_t` the mean factor the steps t .. t+H−1 were taken at.  Dividing
by it makes the target the decrease a full LLP step would have given (to first order, the
decrease is proportional to the step): without it, the fit sees its own actions (a shortened
step decreases the loss less, so the model predicts less and keeps the steps short -- in a
measured run on mnist1d one seed of three stayed at the smallest factor for 13 of 15 epochs).
Different steps see different mini-batches, so :math:`y_t` is a noisy target; the clip keeps
one diverging stretch (or the noise amplified by a small factor) from dominating the fit.
Features (:data:`FEATURES`; a probe step whose features are not finite adds no sample and
keeps the factor at 1):

* ``bias`` = 1;
* ``log_curvature`` = :math:`\log\kappa_t` (LLP's smoothed curvature scale);
* ``log_anisotropy`` = :math:`\log(\max_i\|h_i\| / \operatorname{mean}_i\|h_i\|)` over the
  probe's N gradient changes (large when one direction crossed a kink or an outlier);
* ``dir_cos`` = :math:`\operatorname{mean}_i d_i^\top h_i / \operatorname{mean}_i\|h_i\|`
  (in [−1, 1]: negative when the probed directions curve downward);
* ``log_step_curv`` = :math:`\log(\eta_t\kappa_t)`, the step against the curvature
  (:math:`\le\log(c s)` whenever the inverse rule binds);
* ``log_rel_first_order`` = :math:`\log(\eta_t\|g_t\|^2 / L_t)`, the first-order predicted
  relative decrease of one step;
* ``prev_decrease`` = the latest realised :math:`y` (0 before any).

**Model**: ridge regression fitted online in closed form (float64): with :math:`A_n = \lambda I
+ \sum_{k\le n} x_k x_k^\top` and :math:`b_n = \sum_{k\le n} x_k y_k`, the weights are
:math:`w_n = A_n^{-1} b_n`, i.e. exactly :math:`(X^\top X + \lambda I)^{-1} X^\top y` over the
n completed samples (``ridge`` = λ; the bias is penalised too).  A sample is completed H steps
after its probe step, so the prediction at t uses only samples whose horizon has passed: no
look-ahead.  Deterministic (no randomness at all) and tiny (7 features).

**Action** after ``warmup`` completed samples (before: factor 1, predictions still logged):
the step size of every step until the next probe step is :math:`f\cdot\eta_t`, with the
prediction :math:`\hat y = w^\top x_t`, the mean realised target :math:`\bar y` and
:math:`f_{min}` = ``min_scale``:

* ``scale``: :math:`f = \operatorname{clip}(\hat y / \bar y, f_{min}, 1)` when
  :math:`\bar y > 0` (a full step where at least the average decrease is predicted, a
  proportionally shorter one below it); when :math:`\bar y \le 0`, as ``veto``;
* ``veto``: :math:`f = f_{min}` when a loss increase is predicted (:math:`\hat y < 0`), else 1
  (:math:`f_{min} > 0`: a step of zero would teach the model nothing about that region).

The features carry the unscaled :math:`\eta_t`.  The prequential error
:math:`(\hat y_t - y_t)^2` (the prediction made at t, scored when :math:`y_t` is known) is
logged as ``llp_meta_loss``.

Everything (A, b, counts, the pending samples awaiting their horizon, the current factor,
the epoch accumulators) is in :meth:`MetaModel.state_dict`, saved inside LLP's, so a resumed
job is bit-identical.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

ACTIONS = ("scale", "veto")
FEATURES = ("bias", "log_curvature", "log_anisotropy", "dir_cos", "log_step_curv",
            "log_rel_first_order", "prev_decrease")
# Per-epoch metrics: mean prediction over the epoch's probe steps, mean factor over its steps,
# probe steps with a predicted increase after warm-up, mean prequential squared error of the
# samples completed in the epoch, completed samples so far.
EPOCH_KEYS = ("llp_meta_pred", "llp_meta_scale", "llp_meta_vetoes", "llp_meta_loss",
              "llp_meta_samples")


def features(kappa: Optional[float], curv_mean: float, curv_max: float, dir_curv_mean: float,
             lr: float, grad_norm: float, loss: Optional[float], prev: float
             ) -> Optional[torch.Tensor]:
    """The feature vector :data:`FEATURES` (float64), or None when one is not finite."""
    try:
        if loss is None or kappa is None:
            return None
        x = [1.0, math.log(kappa), math.log(curv_max / curv_mean), dir_curv_mean / curv_mean,
             math.log(lr * kappa), math.log(lr * grad_norm ** 2 / abs(loss)), prev]
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    if not all(math.isfinite(v) for v in x):
        return None
    return torch.tensor(x, dtype=torch.float64)


def step_factor(pred: float, reference: float, action: str, min_scale: float) -> float:
    """The step multiplier from a prediction (see the module docstring)."""
    if action == "scale" and reference > 0:
        return min(1.0, max(min_scale, pred / reference))
    return min_scale if pred < 0 else 1.0


class MetaModel:
    """Online ridge regression (probe features → later relative loss decrease) and its action.

    Usage by LLP: :meth:`observe` with each step's mini-batch loss (before that step's probe),
    :meth:`decide` at each probe step with :func:`features`, :attr:`factor` multiplies the
    step size until the next decision."""

    def __init__(self, ridge: float = 1.0, warmup: int = 10, horizon: int = 10,
                 action: str = "scale", min_scale: float = 0.1) -> None:
        if not (math.isfinite(ridge) and ridge > 0):
            raise ValueError(f"meta ridge must be > 0 (got {ridge!r})")
        if warmup < 1 or horizon < 1:
            raise ValueError(f"meta warmup and horizon must be >= 1 (got {warmup}, {horizon})")
        if action not in ACTIONS or not 0 < min_scale <= 1:
            raise ValueError(f"meta action in {ACTIONS}, min_scale in (0, 1] (got {action!r}, "
                             f"{min_scale!r})")
        self.ridge, self.warmup, self.horizon = float(ridge), int(warmup), int(horizon)
        self.action, self.min_scale = action, float(min_scale)
        k = len(FEATURES)
        self.a = self.ridge * torch.eye(k, dtype=torch.float64)
        self.b = torch.zeros(k, dtype=torch.float64)
        self.n, self.target_sum, self.prev = 0, 0.0, 0.0
        self.loss_now: Optional[float] = None  # the latest observed mini-batch loss
        self.pending: list[dict[str, Any]] = []  # samples awaiting their horizon
        self.factor = 1.0
        self._acc: dict[str, float] = {}

    # ------------------------------------------------------------------ the regression
    def weights(self) -> torch.Tensor:
        """:math:`w = A^{-1} b = (X^\\top X + \\lambda I)^{-1} X^\\top y`."""
        return torch.linalg.solve(self.a, self.b)

    def predict(self, x: torch.Tensor) -> float:
        return float(x @ self.weights())

    def update(self, x: torch.Tensor, y: float) -> None:
        """Add one completed sample: :math:`A \\leftarrow A + x x^\\top`,
        :math:`b \\leftarrow b + x y`."""
        self.a += torch.outer(x, x)
        self.b += x * y
        self.n += 1
        self.target_sum += y

    def _add(self, key: str, value: float) -> None:
        self._acc[key] = self._acc.get(key, 0.0) + value

    # ------------------------------------------------------------------ the stream
    def observe(self, loss: float) -> None:
        """One step's mini-batch loss at the parameters before the step: extends the pending
        samples, completes those whose horizon is reached (fit + prequential error). A
        non-finite loss drops the pending samples (their target is undefined)."""
        loss = float(loss)
        if not math.isfinite(loss):
            self.pending, self.loss_now = [], None
            return
        still = []
        for item in self.pending:
            item["later"].append(loss)
            if len(item["later"]) < self.horizon:
                still.append(item)
                continue
            start = item["start"]
            f_mean = item["fsum"] / self.horizon if item["fsum"] > 0 else 1.0
            y = (start - sum(item["later"]) / self.horizon) / (f_mean * max(abs(start), 1e-12))
            y = min(1.0, max(-1.0, y))
            self._add("err_sum", (item["pred"] - y) ** 2)
            self._add("err_n", 1.0)
            self.update(item["x"], y)
            self.prev = y
        self.pending, self.loss_now = still, loss

    def decide(self, x: Optional[torch.Tensor]) -> float:
        """At a probe step: predict, set :attr:`factor` (1 during warm-up or without features)
        and queue the sample. Returns the factor."""
        self.factor = 1.0
        if x is None or self.loss_now is None:
            return self.factor
        pred = self.predict(x)
        self.pending.append({"x": x, "start": self.loss_now, "pred": pred, "later": [],
                             "fsum": 0.0})
        self._add("pred_sum", pred)
        self._add("pred_n", 1.0)
        if self.n >= self.warmup:
            self.factor = step_factor(pred, self.target_sum / self.n, self.action,
                                      self.min_scale)
            self._add("vetoes", 1.0 if pred < 0 else 0.0)
        return self.factor

    def count_step(self) -> None:
        """Account one optimizer step taken at :attr:`factor` (also in the pending samples'
        :math:`\bar f`; a sample with no step counted takes :math:`\bar f = 1`)."""
        for item in self.pending:
            item["fsum"] += self.factor
        self._add("scale_sum", self.factor)
        self._add("steps", 1.0)

    def pop_epoch_metrics(self) -> dict[str, float]:
        """:data:`EPOCH_KEYS` since the last call (NaN where nothing happened); resets."""
        acc, self._acc = self._acc, {}

        def mean(total: str, count: str) -> float:
            return acc.get(total, 0.0) / acc[count] if acc.get(count) else math.nan
        return {"llp_meta_pred": mean("pred_sum", "pred_n"),
                "llp_meta_scale": mean("scale_sum", "steps"),
                "llp_meta_vetoes": int(acc.get("vetoes", 0.0)),
                "llp_meta_loss": mean("err_sum", "err_n"), "llp_meta_samples": self.n}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"a": self.a.clone(), "b": self.b.clone(), "n": self.n,
                "target_sum": self.target_sum, "prev": self.prev, "loss_now": self.loss_now,
                "pending": [{"x": p["x"].clone(), "start": p["start"], "pred": p["pred"],
                             "later": list(p["later"]), "fsum": p["fsum"]}
                            for p in self.pending],
                "factor": self.factor, "acc": dict(self._acc)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.a, self.b = state["a"].clone(), state["b"].clone()
        self.n, self.target_sum = int(state["n"]), float(state["target_sum"])
        self.prev, self.loss_now = float(state["prev"]), state["loss_now"]
        self.pending = [{"x": p["x"].clone(), "start": float(p["start"]),
                         "pred": float(p["pred"]), "later": [float(v) for v in p["later"]],
                         "fsum": float(p["fsum"])} for p in state["pending"]]
        self.factor, self._acc = float(state["factor"]), dict(state["acc"])
