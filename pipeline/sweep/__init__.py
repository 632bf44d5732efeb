"""Sweeps: one Hydra job = the four stage functions into the job's own directory (``job``); how the sweep ends on
the terminal and in MLflow (``summary``: the Hydra callback ``SweepSummary``); what this process runs, for the line
that resumes it after Ctrl-C (``invocation``); the forked worker pool of ``hydra/launcher=pool`` (``forked``) and
each worker's background warm-up (``warmup``)."""
