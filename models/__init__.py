"""The science: learning rules, networks and the compiled training loop. Never imports optuna."""

from models.api import cross_validate, fit_and_score, register_trainer
from models.networks import MLP
from models.rules import RULES, Rule, get_rule
from models.sd import SDConfig, cross_validate_sd
from models.train import CVResult, FoldData, TrainConfig

register_trainer(SDConfig, cross_validate_sd)  # segregated dendrites: its own dynamics, its own trainer

__all__ = [
    "MLP", "RULES", "Rule", "get_rule", "TrainConfig", "FoldData", "CVResult", "cross_validate", "fit_and_score",
    "register_trainer", "SDConfig",
]
