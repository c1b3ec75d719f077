"""Analysis of sweep results: collect jobs into a table, rank curvature measures against
generalization (Kendall τ, granulated Ψ, partial correlation, cluster-robust and mixed models)."""

from landscope.analysis.collect import Collection, collect, save, swept_factors, swept_keys
from landscope.analysis.measures import (default_measures, granulated_kendall, measures_table,
                                         partial_correlation)

__all__ = ["Collection", "collect", "save", "swept_keys", "swept_factors", "measures_table",
           "default_measures", "granulated_kendall", "partial_correlation"]
