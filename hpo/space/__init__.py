"""Search spaces: the algorithms a study can run, each model family's hyperparameters as data, and overrides.

    algorithms.py  every --algo: the models it exists for, their spaces, known-good starting points
    parameters.py  what a parameter is: distribution, domain, condition; a study's effective space
    training.py    the parameters every rule network shares, and multilayer perceptrons
    cnn.py         convolutional networks, valid by construction for any choices a study allows
    sd.py          segregated dendrites
    families.py    one Space per model family: its table, its suggest function, its checks against a dataset
    overrides.py   [space] tables of grids and --space files; the effective space stored with each study
"""

from hpo.space.algorithms import ALGORITHMS, MODELS, get_algorithm, study_effective_space, suggest
from hpo.space.overrides import show_spaces, space_table

__all__ = ["ALGORITHMS", "MODELS", "get_algorithm", "show_spaces", "space_table", "study_effective_space", "suggest"]
