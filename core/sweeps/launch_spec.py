"""Moved to `segsweep.sweeps.slurm_spec` (the `slurm:` block); re-exported here for one release."""
from .slurm_spec import SlurmSpec, extra_option, minutes_of, slurm_options  # noqa: F401
