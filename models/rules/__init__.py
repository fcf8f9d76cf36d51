"""Learning rules: the registry (``registry``), the one layer operation behind them (``ops``) and their Flax
layers (``layers``). Everything a user needs is importable from here::

    from models.rules import Dense, Conv, DirectFeedback, get_rule
"""

from models.rules.layers import (
    TAPS,
    Conv,
    Dense,
    DFADense,
    DirectFeedback,
    DirectTarget,
    FADense,
    KPDense,
    direct_tap_layer,
)
from models.rules.ops import ConvForward, DenseForward, conv, direct_tap, error_check, rule_op
from models.rules.registry import (
    FEEDBACK,
    FEEDBACK_RNG,
    RULES,
    Rule,
    UnknownRuleError,
    brsf_feedback,
    frsf_feedback,
    get_rule,
    sign_feedback_scale,
    usf_feedback,
)

__all__ = [
    "TAPS", "Conv", "Dense", "DFADense", "DirectFeedback", "DirectTarget", "FADense", "KPDense", "direct_tap_layer",
    "ConvForward", "DenseForward", "conv", "direct_tap", "error_check", "rule_op", "FEEDBACK", "FEEDBACK_RNG",
    "RULES", "Rule", "UnknownRuleError", "brsf_feedback", "frsf_feedback", "get_rule", "sign_feedback_scale",
    "usf_feedback",
]
