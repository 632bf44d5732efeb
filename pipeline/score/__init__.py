"""The score family: throughput statistics (``stats``), the run's summary numbers (``summary``) and its PNG plots
(``plots``).  Answer quality is its own family (``pipeline/quality``), MLflow logging too (``pipeline/tracking``).
Stage script: ``pipeline/stages/score.py``."""
