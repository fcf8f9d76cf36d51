"""The science: learning rules, networks and the compiled training loop. Never imports optuna."""

from models.api import cross_validate, fit_and_score, register_trainer
from models.networks import MLP
from models.rules import RULES, Rule, get_rule
from models.train import CVResult, FoldData, TrainConfig

__all__ = [
    "MLP", "RULES", "Rule", "get_rule", "TrainConfig", "FoldData", "CVResult", "cross_validate", "fit_and_score",
    "register_trainer",
]
