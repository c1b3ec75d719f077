"""The check for missed copies of repeated eigenvalues (landscope.probes.complement) on dense
float64 matrices with chosen spectra, its fresh start in the probe suite also when the
density runs, and the other lists it checks (per-block spectra, GGN, NTK and
the residual H - G) on a network whose zeroed head repeats their eigenvalues."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from landscope.config import DensityConfig, ProbeConfig  # noqa: E402
from landscope.probes import steps  # noqa: E402
from landscope.probes.blocks import block_spectra, parameter_groups  # noqa: E402
from landscope.probes.complement import beyond_list, complement_check  # noqa: E402
from landscope.probes.cost import ProbeLedger  # noqa: E402
from landscope.probes.curvature_ops import GGNOperator, NTKOperator  # noqa: E402
from landscope.probes.curvature_probes import curvature_scalars, curvature_spectra  # noqa: E402
from landscope.probes.hvp import HessianOperator  # noqa: E402
from landscope.probes.lanczos import lanczos_eigs  # noqa: E402
from landscope.probes.operator import DenseOperator, quadratic_with_spectrum  # noqa: E402
from landscope.probes.probe_data import ProbeData  # noqa: E402
from landscope.probes.verify import dense_hessian  # noqa: E402
from probe_models import seeded_model  # noqa: E402

F64 = torch.float64


def _spectrum(head: list[float], n: int = 300, seed: int = 1) -> tuple[DenseOperator, torch.Tensor]:
    bulk = torch.rand(n - len(head), generator=torch.Generator().manual_seed(seed), dtype=F64)
    eigs = torch.cat([torch.tensor(head, dtype=F64), bulk])
    return DenseOperator(quadratic_with_spectrum(eigs, seed=seed)[0]), eigs


def _exact(op: DenseOperator, res, expected: list[float]) -> None:
    """The list is ``expected`` to 1e-6 relative, its vectors orthonormal, its residuals true
    and within the tolerance."""
    want = torch.tensor(expected, dtype=F64)
    assert torch.allclose(res.eigenvalues, want, rtol=1e-6, atol=0)
    v = res.eigenvectors
    assert torch.allclose(v.T @ v, torch.eye(len(expected), dtype=F64), atol=1e-10)
    true_res = (op.matrix @ v - v * res.eigenvalues).norm(dim=0)
    assert torch.allclose(res.residuals, true_res, rtol=1e-6, atol=1e-12)
    assert res.converged.all() and (true_res <= 1e-6 * want.abs()).all()


@pytest.mark.parametrize("head,k,which,missed_by_lanczos", [
    ([10.0, 10.0, 10.0, 7.0, 7.0, 5.0], 5, "largest", [10.0, 10.0, 7.0, 7.0, 5.0]),
    ([8.0, 8.0, 6.0], 2, "largest", [8.0, 6.0]),
    ([-3.0, -3.0, -3.0, -1.0], 3, "smallest", [-3.0, -3.0, -1.0]),
])
@pytest.mark.parametrize("seed", [0, 1])
def test_check_restores_the_copies_one_lanczos_run_misses(head, k, which, missed_by_lanczos,
                                                          seed):
    op, eigs = _spectrum(head)
    one_run = lanczos_eigs(op, k=k, which=which, seed=seed)
    # the failure the check exists for: one start vector lists a copy too few
    assert torch.allclose(one_run.eigenvalues, torch.tensor(missed_by_lanczos, dtype=F64),
                          rtol=1e-6)
    checked = complement_check(op, one_run, seed=seed + 10)
    expected = torch.sort(eigs, descending=(which == "largest")).values[:k].tolist()
    _exact(op, checked, expected)
    assert checked.checked and checked.added_by_check == 1
    assert checked.n_matvecs > one_run.n_matvecs  # its products are counted
    assert checked.which == which


@pytest.mark.parametrize("head", [[5.0, 4.0, 3.0, 2.0, 1.5], [10.0, 9.99, 9.98, 9.97, 9.96, 9.95]])
def test_check_changes_nothing_without_repeated_eigenvalues(head):
    """Distinct eigenvalues, a separated list or a cluster: the list stays as it was, and the
    check ends (a converged extreme pair of the complement short of the k-th value)."""
    op, _ = _spectrum(head)
    one_run = lanczos_eigs(op, k=5, seed=0)
    checked = complement_check(op, one_run, seed=7)
    assert torch.equal(checked.eigenvalues, one_run.eigenvalues)
    assert torch.equal(checked.eigenvectors, one_run.eigenvectors)
    assert checked.checked and checked.added_by_check == 0


def test_check_stops_at_a_cap_and_says_it_did_not_conclude():
    op, _ = _spectrum([10.0, 10.0, 10.0, 7.0, 7.0, 5.0])
    one_run = lanczos_eigs(op, k=5, seed=0)
    budget = op.n_matvecs + 3
    cut = complement_check(op, one_run, seed=1,
                           stop=lambda: "max_products" if op.n_matvecs >= budget else None)
    assert not cut.checked and cut.stopped_by == "max_products"
    assert torch.equal(cut.eigenvalues, one_run.eigenvalues)
    spent = op.n_matvecs  # a cap already spent: no product at all
    at_once = complement_check(op, one_run, seed=1, stop=lambda: "budget_s")
    assert op.n_matvecs == spent and at_once.n_matvecs == one_run.n_matvecs
    assert not at_once.checked and at_once.stopped_by == "budget_s"
    with pytest.raises(ValueError, match="eigenvectors"):
        complement_check(op, lanczos_eigs(op, k=2, seed=0, return_vectors=False))


def test_beyond_list_uses_the_kth_tolerance():
    op, _ = _spectrum([8.0, 8.0, 6.0])
    top = lanczos_eigs(op, k=2, seed=0)  # [8, 6]
    assert beyond_list(top, 8.0, 1e-6) and not beyond_list(top, 6.0 * (1 + 1e-7), 1e-6)
    bottom = lanczos_eigs(op, k=2, which="smallest", seed=0)
    assert beyond_list(bottom, float(bottom.eigenvalues[-1]) - 0.1, 1e-6)


def _density_run(op: DenseOperator, top_k: int, multiplicity_check: bool = True):
    cfg = ProbeConfig(top_k=top_k, multiplicity_check=multiplicity_check,
                      density=DensityConfig(enabled=True, probes=3, steps=30))
    ledger = ProbeLedger(counter=lambda: op.n_matvecs)
    run = SimpleNamespace(cfg=cfg, op=op, ledger=ledger, plan={}, top=None, density=None,
                          not_started={})
    steps.step_top(run)
    steps.step_density(run)
    return run


def test_with_the_density_the_check_starts_fresh():
    """With the density on, the top-k is checked from its own seed, not from the top-k's start
    vector (the density's first probe: it has no component along a missed copy). A missed copy
    is put in the list (its products in the top stage); the density then makes its own first
    run, since the top-k's Krylov space no longer holds the list."""
    op, eigs = _spectrum([10.0, 10.0, 10.0, 7.0, 7.0, 5.0])
    run = _density_run(op, 5)
    _exact(op, run.top, [10.0, 10.0, 10.0, 7.0, 7.0])
    assert run.top.checked and run.top.added_by_check == 1
    assert run.ledger.stages["top"].products == run.top.n_matvecs
    assert not run.density.first_from_top and run.top.krylov is None

    op, _ = _spectrum([5.0, 4.0, 3.0, 2.0, 1.5])
    plain = lanczos_eigs(op, k=5, seed=0)
    run = _density_run(op, 5)
    assert run.top.checked and run.top.added_by_check == 0
    assert run.top.n_matvecs > plain.n_matvecs  # the check's fresh round is paid
    assert torch.equal(run.top.eigenvalues, plain.eigenvalues)
    # the density's first rule is the top-k's Krylov space grown to k + steps vectors
    assert run.density.first_from_top and run.top.krylov is None
    assert run.density.steps[0] == run.cfg.density.steps


def test_multiplicity_check_off_keeps_one_lanczos_run():
    op, _ = _spectrum([10.0, 10.0, 10.0, 7.0, 7.0, 5.0])
    run = _density_run(op, 5, multiplicity_check=False)
    assert not run.top.checked and run.top.added_by_check == 0
    assert float(run.top.eigenvalues[2]) == pytest.approx(7.0, rel=1e-6)
    assert run.density.first_from_top  # the list is the Krylov space's own top-5


@pytest.mark.parametrize("which", ["top", "bottom"])
def test_without_the_density_the_suite_runs_the_check(which):
    head = [10.0, 10.0, 10.0, 7.0, 7.0, 5.0] if which == "top" else [-3.0, -3.0, -3.0, -1.0]
    op, eigs = _spectrum(head)
    k = 5 if which == "top" else 3
    cfg = ProbeConfig(top_k=k if which == "top" else 0, bottom_k=k if which == "bottom" else 0)
    run = SimpleNamespace(cfg=cfg, op=op, ledger=ProbeLedger(counter=lambda: op.n_matvecs),
                          plan={}, top=None, bottom=None, density=None, not_started={})
    getattr(steps, f"step_{which}")(run)
    got = getattr(run, which)
    _exact(op, got, torch.sort(eigs, descending=which == "top").values[:k].tolist())
    assert got.checked and got.added_by_check == 1
    assert run.ledger.stages[which].products == got.n_matvecs


class _Diagonal:
    """A diagonal operator (a large dimension at the cost of a vector product)."""

    def __init__(self, d: torch.Tensor) -> None:
        self.d, self.dim, self.n_matvecs = d, d.numel(), 0
        self.dtype, self.device = d.dtype, d.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.n_matvecs += 1
        return self.d * v


def test_a_hessian_like_spectrum_is_not_ended_by_a_random_starts_rayleigh_quotient():
    """D = 40,000 with a bulk near zero (as on a network's Hessian): a random start's Rayleigh
    quotient is tiny and its residual small against the k-th value, yet the missed copy of 50
    is found (the round runs until its extreme pair has converged relative to its own value)."""
    bulk = 1e-2 * torch.rand(40_000 - 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    op = _Diagonal(torch.cat([torch.tensor([50.0, 50.0, 30.0, 20.0, 10.0], dtype=F64), bulk]))
    one_run = lanczos_eigs(op, k=3, seed=0)
    assert torch.allclose(one_run.eigenvalues, torch.tensor([50.0, 30.0, 20.0], dtype=F64))
    checked = complement_check(op, one_run, seed=1)
    assert torch.allclose(checked.eigenvalues, torch.tensor([50.0, 50.0, 30.0], dtype=F64),
                          rtol=1e-6)
    assert checked.checked and checked.added_by_check == 1


# ------------------------------------------------------- the other lists: blocks, GGN, NTK
def _zero_head_mlp():
    """The probe tests' MLP with its last layer zeroed: every sample's softmax is uniform, so
    the output Hessian A = (I − 11ᵀ/C)/C is the same for all, and the head's weight block of the
    Hessian, and the GGN, are A ⊗ (the features' second moment): each eigenvalue twice (C = 3),
    the NTK's (features' Gram) ⊗ I_C: each eigenvalue three times."""
    model, x, y = seeded_model({"name": "mlp", "width": 8, "depth": 2}, (1, 6), 3, 40)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    return model, ProbeData.from_tensors(x, y, 20), last


def _top(matrix: torch.Tensor, k: int) -> torch.Tensor:
    return torch.linalg.eigvalsh(0.5 * (matrix + matrix.T)).flip(0)[:k]


def test_block_spectra_check_the_copies_of_a_zeroed_head():
    model, data, last = _zero_head_mlp()
    groups = parameter_groups(model, "layer")
    name = next(g for g, members in groups.items() if any(
        dict(model.named_parameters())[m] is last.weight for m in members))
    names = [n for n, p in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    start = sum(sizes[: names.index(groups[name][0])])
    idx = torch.arange(start, start + sum(dict(model.named_parameters())[m].numel()
                                          for m in groups[name]))
    want = _top(dense_hessian(model, data)[idx][:, idx], 4)
    assert float(want[0] - want[1]) < 1e-9 * float(want[0])  # the copies are there
    plain = {b.name: b for b in block_spectra(model, data, groups, k=4, multiplicity_check=False)}
    got = {b.name: b for b in block_spectra(model, data, groups, k=4)}
    assert not plain[name].checked
    assert not torch.allclose(plain[name].eigenvalues, want, rtol=1e-6)  # one run misses them
    assert torch.allclose(got[name].eigenvalues, want, rtol=1e-6, atol=0)
    assert got[name].checked and got[name].missed_copies >= 1
    assert got[name].summary()["missed_copies"] == got[name].missed_copies
    assert got[name].n_matvecs > plain[name].n_matvecs  # the check's products are counted
    assert all(b.checked for b in got.values() if len(b.eigenvalues) >= 2)


def test_ggn_and_ntk_spectra_check_the_copies_of_a_zeroed_head():
    model, data, _ = _zero_head_mlp()
    hessian = HessianOperator(model, data)
    top_h = lanczos_eigs(hessian, k=4, seed=0)
    dense = {}
    ops = {"ggn": GGNOperator(model, data), "ntk": NTKOperator(model, data, samples=16)}
    for kind, op in ops.items():
        eye = torch.eye(op.dim, dtype=F64)
        dense[kind] = _top(torch.stack([op.matvec(e) for e in eye], 1), 4)
    assert float(dense["ntk"][0] - dense["ntk"][2]) < 1e-9 * float(dense["ntk"][0])
    for check in (False, True):
        cfg = ProbeConfig(top_k=4, curvature=["ggn", "ntk"], curvature_ntk_samples=16,
                          multiplicity_check=check)
        res = curvature_spectra(model, data, hessian, top_h, cfg, lambda: None, 10)
        s = curvature_scalars(res)
        for kind in ("ggn", "ntk"):
            got = res.spectra[kind].top.eigenvalues
            assert s[f"{kind}_checked"] is check
            if check:
                assert torch.allclose(got, dense[kind], rtol=1e-6, atol=0)
                assert s[f"{kind}_missed_copies"] >= 1
            else:
                assert not torch.allclose(got, dense[kind], rtol=1e-6)
                assert s[f"{kind}_missed_copies"] == 0
        assert s["residual_checked"] is check


def test_scalars_from_before_the_check_are_recognized():
    """Today's scalars (every golden case of test_probe_run) are current; with a checked
    name removed they are not; a k = 1 result never had one."""
    import json

    from landscope.probes.complement import predates_multiplicity_check

    golden = json.loads((Path(__file__).parent / "expected" / "probe_run_expected.json")
                        .read_text())
    assert not any(predates_multiplicity_check(s) for s in golden.values())
    full = golden["full"]
    assert predates_multiplicity_check({k: v for k, v in full.items() if k != "top_checked"})
    blocks = {n: {k: v for k, v in b.items() if k != "checked"}
              for n, b in full["blocks"].items()}
    assert predates_multiplicity_check({**full, "blocks": blocks})
    assert predates_multiplicity_check({"ggn_top_eigenvalues": [2.0, 1.0]})
    assert not predates_multiplicity_check({"ggn_top_eigenvalues": [2.0, 1.0],
                                            "ggn_checked": False})
    assert not predates_multiplicity_check({"lambda_max": 1.0, "spectral_gap": None})
    assert not predates_multiplicity_check({"skipped": "diverged"})
