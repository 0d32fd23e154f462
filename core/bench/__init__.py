"""The speed benchmark (`segsweep benchmark`): the training path against its ceiling, a naive
baseline and a peer stack, every ratio from contenders timed side by side in one process.

`measure` (interleaving, paired ratios, figures, isolation, memory), `contenders` (plans, the
trainer's pieces, the raw step), `figures`, `peer` and `trial` (the groups of figures; the trial
times `fit` through a callback), `report` (the markdown table), `suite` (the whole run).
This module only names the figures and their targets, so the command can list them cheaply.
"""
FIGURES = ("raw_step", "trainer_vs_raw", "fast_vs_naive", "cache_vs_uncached", "mfu", "peer_ratio",
           "trial_overhead", "study_trial_overhead", "memory")
TARGETS = {
    "trainer_vs_raw": (">=", 0.95), "fast_vs_naive": (">=", 2.0), "cache_vs_uncached": (">=", 5.0),
    "mfu": (">=", 0.4), "peer_ratio": ("<=", 1.0), "trial_overhead": ("<", 0.05),
}
