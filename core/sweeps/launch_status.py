"""Moved to `segsweep.sweeps.status` (it serves every launcher); re-exported here for one release."""
from .running import stale_trials  # noqa: F401
from .status import STATES, Row, Running, SweepStatus, holder, status_lines, status_location, sweep_status  # noqa: F401
