"""Statistical tests of the hypotheses of issue #5, one module per hypothesis (``h2``: skip
connections flatten the landscape)."""
