"""Structured-config schemas for the runner, registered in Hydra's ConfigStore.

``conf/config.yaml`` starts its defaults list with ``landscope_schema``: every group file is
merged onto these typed dataclasses, so a misspelled key or a value of the wrong type fails
at composition and the message names the key (and, for enum-typed fields, the allowed
values). Each group lives in one module with its fields' defaults and meanings and its
``check()`` (the value checks types cannot express: lr > 0, width >= 1, ...);
:func:`validate` runs them all before any job writes a file. Options that change no result
carry the :data:`~landscope.config.check.LAYOUT` marker, from which the fingerprints and
the job directory names derive what they leave out (:func:`result_free_keys`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from landscope.config.check import LAYOUT, layout_keys, need
from landscope.config.choices import (  # noqa: F401 - the schema's public names
    Activation,
    AugmentName,
    BaseOptimizerName,
    BNStats,
    Choice,
    Corruption,
    DatasetName,
    DirectionNorm,
    LandscapeName,
    LLPAggregate,
    LLPCurvature,
    LLPMetaAction,
    LLPRule,
    LoggerName,
    LossName,
    ModelName,
    NoiseAlignment,
    Norm,
    OptimizerName,
    PerBlock,
    Precision,
    ProbeMode,
    ProbeName,
    Projection,
    Schedule,
    WandbMode,
)
from landscope.config.job import (
    AugmentConfig,
    DatasetConfig,
    LLPConfig,  # noqa: F401 - the schema's public names
    LoggerConfig,
    LossConfig,
    ModelConfig,
    OODConfig,  # noqa: F401 - the schema's public names
    OptimizerConfig,
    TrainConfig,
)
from landscope.config.landscape import (  # noqa: F401 - the schema's public names
    BezierConfig,
    IntrinsicConfig,
    LandscapeConfig,
    LineConfig,
    PlaneConfig,
    TrajectoryConfig,
)
from landscope.config.probe import (  # noqa: F401
    DensityConfig,
    NoiseConfig,
    PacBayesConfig,
    ProbeConfig,
    SharpnessConfig,
    TraceConfig,
)
from landscope.errors import ConfigError  # noqa: F401 - raised by validate; importable here

#: The synthetic problems (dataset and model of the same name; landscope.synthetic).
SYNTHETIC = ("quadratic", "two_basin")
#: The groups run as stages after training, each keyed by its own fingerprint.
STAGE_GROUPS = ("probe", "landscape")


@dataclass
class Config:
    """A job: what it trains (dataset, model, optimizer, train), what it measures on the
    final checkpoint (probe, landscape: separate stages with their own fingerprints) and
    where it reports (logger)."""

    seed: int = 0
    # sweep name: outputs/sweeps/<name>/<overrides>
    name: str = field(default="default", metadata=LAYOUT)
    # resume from the job directory's checkpoint if one exists
    resume: bool = field(default=True, metadata=LAYOUT)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    landscape: LandscapeConfig = field(default_factory=LandscapeConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig, metadata=LAYOUT)

    def check(self) -> None:
        """Every group's :meth:`check`, then the checks across groups."""
        need(self.seed >= 0, "seed", ">= 0", self.seed)
        for group in (self.optimizer, self.train, self.model, self.dataset, self.loss,
                      self.augment):
            group.check()
        if any(str(x) in SYNTHETIC for x in (self.dataset.name, self.model.name)):
            from landscope.synthetic import validate_synthetic

            validate_synthetic(self)  # the dataset/model pair and the synthetic fields
            for key, value, plain_value in (("loss", self.loss.name, "cross_entropy"),
                                            ("augment", self.augment.name, "none")):
                need(value == plain_value, key, f"{plain_value} with dataset="
                     f"{self.dataset.name} (the synthetic problems define their own task)",
                     str(value))
            need(not self.dataset.ood.enabled, "dataset.ood.enabled",
                 f"false with dataset={self.dataset.name}", True)
        for group in (self.probe, self.logger, self.landscape):
            group.check()


def register_configs() -> None:
    """Register the schema as ``landscope_schema`` (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="landscope_schema", node=Config)


def typed(cfg: Any) -> Config:
    """``cfg`` (a composed job config, with or without its ``hydra`` node, or a
    :class:`Config`) as a :class:`Config` instance: dataclasses and enums all the way down.

    >>> typed(OmegaConf.create({"model": {"norm": "batch"}})).model.norm
    <Norm.batch: 'batch'>
    """
    if isinstance(cfg, Config):
        return cfg
    if isinstance(cfg, DictConfig) and "hydra" in cfg:
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), cfg))


def plain(node: Any) -> Any:
    """A config node (a :class:`Config` or group dataclass, or an OmegaConf node) as plain
    containers, enums as their names: what config records and W&B store.

    >>> plain(typed(OmegaConf.create({})).model)["norm"]
    'none'
    """
    if not isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.structured(node)
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)


def result_free_keys() -> list[str]:
    """Dotted names of the options that change no result (marked LAYOUT; a marked group is
    named whole): the training fingerprint leaves them out, with the stage groups, and
    ``conf/config.yaml`` leaves them out of job directory names (a test keeps the two equal).

    >>> result_free_keys()[:4]
    ['name', 'resume', 'dataset.data_dir', 'dataset.download']
    """
    return layout_keys(Config)


def validate(cfg: Any) -> None:
    """Reject values that compose but make no sense; raise :class:`ConfigError`.

    First: keys the schema does not define (added with ``+``/``++``), non-finite numbers and,
    on a composed job (with its ``hydra`` node), a group choice contradicting
    ``<group>.name``; then :meth:`Config.check`."""
    from landscope.config_checks import check_composed_job, check_schema_and_numbers, plain_tree

    check_schema_and_numbers(plain_tree(cfg))
    check_composed_job(cfg)
    typed(cfg).check()
