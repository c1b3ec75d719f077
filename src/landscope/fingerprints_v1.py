"""The version-1 fingerprints, frozen as the release of December 2026 computed them: a job
directory written before version 2 records these (no ``fingerprint_version`` in its
result.json); :mod:`landscope.migrate` recognizes it by them and rewrites its records to
version 2 once. Never change this module: a different hash here strands those jobs.

The hashes are of the version-1 layout: the config is rewritten to the old option names
(:func:`landscope.config.renames.to_legacy`) and cut to the options that release had
(:data:`V1_OPTIONS`), so options added or renamed since change nothing here."""

from __future__ import annotations

import hashlib
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from landscope.config.renames import to_legacy

#: Every option and section of the version-1 schema (dotted names).
V1_OPTIONS = frozenset((
    'seed', 'name', 'resume', 'dataset', 'dataset.name', 'dataset.data_dir', 'dataset.download',
    'dataset.train_size', 'dataset.test_size', 'dataset.label_noise', 'dataset.normalize',
    'dataset.in_memory', 'dataset.seed', 'dataset.classes', 'dataset.noise',
    'dataset.test_shift', 'dataset.spectrum', 'dataset.dim', 'dataset.condition',
    'dataset.outliers', 'dataset.tolerance', 'dataset.sharp_curvature',
    'dataset.flat_curvature', 'dataset.barrier', 'dataset.tilt', 'model', 'model.name',
    'model.width', 'model.depth', 'model.norm', 'model.skip', 'model.activation',
    'model.init_scale', 'model.patch_size', 'model.heads', 'model.kernel_size', 'optimizer',
    'optimizer.name', 'optimizer.lr', 'optimizer.momentum', 'optimizer.nesterov',
    'optimizer.weight_decay', 'optimizer.betas', 'optimizer.eps', 'optimizer.rho',
    'optimizer.adaptive', 'optimizer.base', 'optimizer.llp_probes', 'optimizer.llp_eps',
    'optimizer.llp_every', 'optimizer.llp_rule', 'optimizer.llp_c', 'optimizer.llp_curvature',
    'optimizer.llp_aggregate', 'optimizer.llp_ema', 'optimizer.llp_damping',
    'optimizer.llp_seed', 'optimizer.schedule', 'optimizer.step_size', 'optimizer.gamma',
    'optimizer.min_lr', 'train', 'train.epochs', 'train.batch_size', 'train.full_batch',
    'train.grad_clip', 'train.target_train_loss', 'train.max_grad_evals',
    'train.eval_batch_size', 'train.checkpoint_every', 'train.checkpoint_interval_s',
    'train.keep_checkpoints', 'train.threads', 'train.progress', 'train.device',
    'train.precision', 'probe', 'probe.name', 'probe.data_size', 'probe.micro_batch',
    'probe.mode', 'probe.max_products', 'probe.budget_s', 'probe.checkpointing',
    'probe.progress', 'probe.ranks', 'probe.seed', 'probe.top_k', 'probe.bottom_k',
    'probe.lanczos_tol', 'probe.trace', 'probe.trace_rse', 'probe.trace_max_samples',
    'probe.density', 'probe.slq_probes', 'probe.slq_steps', 'probe.density_grid',
    'probe.density_sigma', 'probe.logdet_eps', 'probe.sharpness', 'probe.sharpness_family',
    'probe.sharpness_rhos', 'probe.keskar_epsilons', 'probe.sharpness_samples',
    'probe.sharpness_antithetic', 'probe.noise', 'probe.noise_samples', 'probe.noise_alignment',
    'probe.per_block', 'probe.block_top_k', 'probe.every_n_epochs', 'probe.verify',
    'probe.verify_max_params', 'probe.pacbayes', 'probe.pacbayes_data_size',
    'probe.pacbayes_n_mc', 'probe.pacbayes_n_select', 'probe.pacbayes_delta',
    'probe.pacbayes_delta_mc', 'probe.pacbayes_beta_grid', 'probe.pacbayes_posterior',
    'probe.pacbayes_steps', 'probe.pacbayes_lr_mean', 'probe.pacbayes_lr_var',
    'probe.pacbayes_batch_size', 'probe.pacbayes_n_match', 'landscape', 'landscape.name',
    'landscape.data_size', 'landscape.seed', 'landscape.batch_size', 'landscape.normalization',
    'landscape.include_bias_norm', 'landscape.bn', 'landscape.workers', 'landscape.line',
    'landscape.line_directions', 'landscape.line_eigen', 'landscape.line_points',
    'landscape.line_range', 'landscape.plane', 'landscape.plane_points',
    'landscape.plane_range', 'landscape.plane_eigen', 'landscape.trajectory',
    'landscape.snapshot_every_steps', 'landscape.snapshot_dtype', 'landscape.trajectory_points',
    'landscape.intrinsic_dim', 'landscape.intrinsic_dims', 'landscape.intrinsic_projection',
    'landscape.intrinsic_epochs', 'landscape.intrinsic_lr', 'landscape.path_points',
    'landscape.bezier', 'landscape.bezier_epochs', 'landscape.bezier_lr', 'landscape.figures',
    'logger', 'logger.name', 'logger.project', 'logger.entity', 'logger.mode',
    'logger.job_type', 'logger.tags', 'logger.dir', 'logger.log_figures', 'logger.init_timeout'
))
# Keys that do not change what a job computes; excluded from the fingerprint.
_NON_RESULT_KEYS = ("name", "resume", "logger", "probe", "landscape", "train.progress",
                    "train.threads", "train.checkpoint_every", "train.checkpoint_interval_s",
                    "train.keep_checkpoints", "dataset.data_dir", "dataset.download")
# the DatasetConfig fields only the synthetic datasets read
DATASET_FIELDS = ("noise", "test_shift", "spectrum", "dim", "condition", "outliers", "tolerance",
                  "sharp_curvature", "flat_curvature", "barrier", "tilt")
SYNTHETIC = ("quadratic", "two_basin")


def _cut(tree: Any, prefix: str = "") -> Any:
    if not isinstance(tree, dict):
        return tree
    return {k: _cut(v, f"{prefix}{k}.") for k, v in tree.items() if f"{prefix}{k}" in V1_OPTIONS}


def _legacy_tree(cfg: Any) -> dict:
    """``cfg`` as given (as the release hashed it: options it lacks stay absent), as plain
    data in the version-1 layout."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    tree = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    return _cut(to_legacy(tree))


def probe_fingerprint_v1(cfg: Any) -> Optional[str]:
    """Hash of the probe config (None when probes are off): a completed job whose
    result.json carries another one gets its probes (re)computed, without retraining."""
    if str(cfg.probe.name) == "none":  # as the release named it
        return None
    c = _legacy_tree(cfg)["probe"]
    for key in ("progress", "ranks"):  # no result changes
        c.pop(key, None)
    for key, default in (("max_products", None), ("budget_s", None), ("checkpointing", False)):
        if c.get(key, default) == default:  # added later: jobs probed before keep their hash
            c.pop(key, None)
    if not c.get("sharpness_family"):
        # average sharpness runs only in the family: without it these settings change nothing,
        # so presets without it keep the hash they had before antithetic pairs (16 evaluations)
        # replaced 32 independent draws
        c.pop("sharpness_antithetic", None)
        c["sharpness_samples"] = 32
    if not c.get("pacbayes"):  # its settings change nothing when it is off: old hashes stay
        c = {k: v for k, v in c.items() if not k.startswith("pacbayes")}
    else:
        if c.get("pacbayes_beta_grid") == [1e-3, 1e-2, 1e-1, 1.0]:
            c.pop("pacbayes_beta_grid")  # added later: jobs probed before keep their hash
        if c.get("pacbayes_posterior") == "grid":  # the grid search reads none of these
            for key in ("pacbayes_posterior", "pacbayes_steps", "pacbayes_lr_mean",
                        "pacbayes_lr_var", "pacbayes_batch_size", "pacbayes_n_match"):
                c.pop(key, None)
    text = OmegaConf.to_yaml(OmegaConf.create(c), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def landscape_fingerprint_v1(cfg: Any) -> Optional[str]:
    """Hash of the landscape config (None when it is off), like :func:`probe_fingerprint`."""
    if str(cfg.landscape.name) == "none":
        return None
    c = _legacy_tree(cfg)["landscape"]
    for key in ("figures",):  # drawing figures or not changes no result
        c.pop(key, None)
    if c.get("snapshot_dtype") == "float32":  # added later: jobs scanned before keep their hash
        c.pop("snapshot_dtype")
    text = OmegaConf.to_yaml(OmegaConf.create(c), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint_v1(cfg: Any) -> str:
    """Hash of the training-relevant part of the resolved config."""
    c = _legacy_tree(cfg)
    for key in _NON_RESULT_KEYS:
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    if c.get("dataset", {}).get("name") not in SYNTHETIC:  # fields only synthetic data read
        for key in DATASET_FIELDS:
            c["dataset"].pop(key, None)
    # Fields added later that change nothing at their defaults stay out of the hash, so jobs
    # run before they existed keep their fingerprint (and are skipped or resumed, not refused).
    opt = c.get("optimizer", {})
    if opt.get("name") != "llp":  # only LLP reads its settings
        for key in [k for k in opt if k.startswith("llp_")]:
            opt.pop(key)
    if c.get("dataset", {}).get("classes", None) is None:  # added later (H4's binary preset)
        c.get("dataset", {}).pop("classes", None)
    if c.get("train", {}).get("max_grad_evals", None) is None:
        c.get("train", {}).pop("max_grad_evals", None)
    if c.get("train", {}).get("precision", "fp32") == "fp32":  # added later, as above
        c.get("train", {}).pop("precision", None)
    text = OmegaConf.to_yaml(OmegaConf.create(c), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
