"""The speed benchmark (`segsweep benchmark`): the training path against its ceiling, a naive
baseline and a peer stack, every ratio from contenders timed side by side in one process.

`measure` (interleaving, paired ratios, figures, isolation, memory), `contenders` (plans, the
trainer's pieces, the raw step), `figures`, `peer` and `trial` (the groups of figures; the trial
times `fit` through a callback), `report` (the markdown table), `suite` (the whole run).
This module only names the figures and their targets, so the command can list them cheaply.
"""
FIGURES = ("raw_step", "trainer_vs_raw", "fast_vs_naive", "cache_vs_uncached", "mfu", "peer_ratio",
           "trial_overhead", "study_trial_overhead", "memory",
           "study_raw_step", "study_trainer_vs_raw", "study_fast_vs_naive", "study_mfu", "study_run_overhead",
           "study_compile")
STUDY_FIGURES = FIGURES[9:]  # the claims study's workload, two workers side by side (`study.py`)
# fast_vs_naive: the defaults are never slower than the naive path where they run (issue 27; it was
# >= 2, which only a CPU with bf16 units could give, from bf16, a choice that changes the numbers).
TARGETS = {
    "trainer_vs_raw": (">=", 0.98), "fast_vs_naive": (">=", 0.98), "cache_vs_uncached": (">=", 5.0),
    "mfu": (">=", 0.4), "peer_ratio": ("<=", 1.0), "trial_overhead": ("<", 0.05),
    "study_trainer_vs_raw": (">=", 0.98), "study_fast_vs_naive": (">=", 0.98), "study_run_overhead": ("<=", 0.08),
}
