"""The science: learning rules, networks, the compiled cross-validation core and its model families
(networks of rule layers, segregated dendrites). Never imports optuna."""

from models.networks import CNN, MLP, ConvLayer
from models.rule_training import TrainConfig
from models.rules import RULES, Rule, get_rule
from models.sd import SDConfig
from models.train import CVResult, FoldData, Plan, cross_validate, fit_and_score

__all__ = [
    "CNN", "MLP", "ConvLayer", "TrainConfig", "RULES", "Rule", "get_rule", "SDConfig", "CVResult", "FoldData",
    "Plan", "cross_validate", "fit_and_score",
]
