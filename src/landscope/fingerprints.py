"""The hashes that key a job and its caches: :func:`fingerprint` (what training computes: a
job directory holds one config's job), :func:`probe_fingerprint` and
:func:`landscape_fingerprint` (what the post-training stages compute: their caches and
result.json fields). Fields added later that change nothing at their defaults stay out of
the hashes, so jobs run before they existed keep theirs (skipped or resumed, not redone)."""

from __future__ import annotations

import hashlib
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from landscope.config import (
    STAGE_GROUPS,
    LandscapeConfig,
    ProbeConfig,
    layout_keys,
    result_free_keys,
)
from landscope.synthetic import DATASET_FIELDS, SYNTHETIC

# What the training fingerprint leaves out: the options marked as changing no result, and the
# stage groups (probes and landscape are run and cached separately, under their own hashes).
_NON_RESULT_KEYS = (*result_free_keys(), *STAGE_GROUPS)


def probe_fingerprint(cfg: DictConfig) -> Optional[str]:
    """Hash of the probe config (None when probes are off): a completed job whose
    result.json carries another one gets its probes (re)computed, without retraining."""
    if str(cfg.probe.name) == "none":
        return None
    c = OmegaConf.to_container(cfg.probe, resolve=True, enum_to_str=True)
    for key in layout_keys(ProbeConfig):  # progress bars, ranks: no result changes
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
        if c.get("pacbayes_beta_grid") == ProbeConfig().pacbayes_beta_grid:
            c.pop("pacbayes_beta_grid")  # added later: jobs probed before keep their hash
        if c.get("pacbayes_posterior") == "grid":  # the grid search reads none of these
            for key in ("pacbayes_posterior", "pacbayes_steps", "pacbayes_lr_mean",
                        "pacbayes_lr_var", "pacbayes_batch_size", "pacbayes_n_match"):
                c.pop(key, None)
    text = OmegaConf.to_yaml(OmegaConf.create(c), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def landscape_fingerprint(cfg: DictConfig) -> Optional[str]:
    """Hash of the landscape config (None when it is off), like :func:`probe_fingerprint`."""
    if str(cfg.landscape.name) == "none":
        return None
    c = OmegaConf.to_container(cfg.landscape, resolve=True, enum_to_str=True)
    for key in layout_keys(LandscapeConfig):  # drawing figures or not changes no result
        c.pop(key, None)
    if c.get("snapshot_dtype") == "float32":  # added later: jobs scanned before keep their hash
        c.pop("snapshot_dtype")
    text = OmegaConf.to_yaml(OmegaConf.create(c), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(cfg: DictConfig) -> str:
    """Hash of the training-relevant part of the resolved config."""
    c = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
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
