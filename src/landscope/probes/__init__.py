"""Curvature probes (work in progress, issue #3): operators and estimators.

Estimators (Lanczos, trace, density) take any :class:`~landscope.probes.operator.Operator`;
the Hessian of a model's loss is one (:mod:`landscope.probes.hvp`), a dense matrix is
another (used as the exact reference in tests).
"""
