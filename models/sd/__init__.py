"""Segregated dendrites (Guerguiev, Lillicrap & Richards 2017), rule ``sd``: a model family of its own.

    dynamics.py  the compartments, spike trains, phases and local updates, as pure JAX functions
    family.py    SDConfig (the network and its training; defaults: the paper's Table 1) and SegregatedDendrites,
                 what the cross-validation core (models.train) needs from it
"""


from models.sd.dynamics import (
    MAX_RATE_PER_STEP,
    POISSON_MAX_SPIKES,
    UNROLL,
    Neurons,
    PhaseAverages,
    SDParams,
    Structure,
    apical_potential,
    basal_potential,
    evaluate,
    fast_uniform,
    hidden_soma_step,
    output_loss,
    output_soma_step,
    plateau,
    poisson_spikes,
    psp_decays,
    psp_step,
    rate,
    rate_slope,
    run_phases,
    teaching_current,
    train_example,
    update,
    zero_neurons,
)
from models.sd.family import (
    SEGREGATED_DENDRITES,
    SPIKING_EVAL_CHUNK,
    SDConfig,
    SDState,
    SegregatedDendrites,
    hyperparameters,
    init_params,
    input_rates01,
    structure_of,
)

__all__ = [
    "SPIKING_EVAL_CHUNK", "MAX_RATE_PER_STEP", "POISSON_MAX_SPIKES", "SEGREGATED_DENDRITES", "UNROLL", "Neurons",
    "PhaseAverages", "SDConfig", "SDParams", "SDState", "SegregatedDendrites", "Structure", "apical_potential",
    "basal_potential", "evaluate", "fast_uniform", "hidden_soma_step", "hyperparameters", "init_params",
    "input_rates01", "output_loss", "output_soma_step", "plateau", "poisson_spikes", "psp_decays", "psp_step", "rate",
    "rate_slope", "run_phases", "structure_of", "teaching_current", "train_example", "update", "zero_neurons",
]
