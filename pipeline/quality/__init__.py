"""Answer-quality scoring: one module per family, combined by ``score_items`` (see score.py for which apply when).

Import cost is kept low (no torch/sentence-transformers until relevance is first used), so the CLI's --help and
the score stage stay fast when relevance is off.
"""

from pipeline.quality.rules import RULES, RuleError, describe_rules, validate_rule
from pipeline.quality.score import FAMILIES, QualityError, score_items

__all__ = ["FAMILIES", "RULES", "QualityError", "RuleError", "describe_rules", "score_items", "validate_rule"]
