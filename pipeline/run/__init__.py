"""The run family: which prompts are asked (``prompts``), the checks before the first one (``preflight``), driving
the app prompt by prompt (``runner``), how each row ended (``outcomes``), a run's identity and what makes a row
reusable (``identity``) and the resumable run directory (``record``).  Stage script: ``pipeline/stages/run.py``."""
