"""Analysis of sweep results: collect jobs into a table, rank curvature measures against
generalization with inference at the level of independent units (seeds within
configurations, configurations between them), test the hypotheses, calibrate every test."""

from landscope.analysis.collect import Collection, collect, save, swept_factors, swept_keys
from landscope.analysis.measures import default_measures, granulated_kendall, partial_correlation
from landscope.analysis.measures_table import joint_regression, measures_table

__all__ = ["Collection", "collect", "save", "swept_keys", "swept_factors", "measures_table",
           "joint_regression", "default_measures", "granulated_kendall", "partial_correlation"]
