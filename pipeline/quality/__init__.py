"""Answer-quality scoring: one module per family, combined by ``pipeline.quality.composite.score_items`` (see score.py
for which families apply when).

Nothing is imported here on purpose: importing one family (e.g. ``pipeline.quality.rules`` for prompt validation)
must not load the others, and import cost stays low (no model
weights until relevance is used; the bundled embedding model runs on numpy, see minilm.py).
"""
