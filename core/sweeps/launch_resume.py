"""Moved to `segsweep.sweeps.resume` (every launcher resumes a signalled trial); re-exported here for one release."""
from .resume import (  # noqa: F401
    IDENTITY_ATTRS, RESUMES_ATTR, queue_resume, reported_before, resume_dir, resumes, slurm_job_id, worker_attrs,
)
