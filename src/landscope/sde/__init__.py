"""The SGD-as-SDE check on the two-basin problem: theory (T_eff and the predictions),
the batched simulation, the settings and the per-job runs of ``runner.sde``."""
