"""Compiling: the store of compiled programs, program sharing and fold-strategy decisions, as one ``Compiler``.

    from models.compile import Compiler
    compiler = Compiler(directory="~/.cache/bioplausible-hpo/jax/programs")   # what a study process uses
    models.cross_validate(config, data, 10, seed=0, compiler=compiler)
"""

from models.compile.compiler import Compiled, Compiler, default_compiler
from models.compile.folds import provisional_mapping, work_bucket
from models.compile.sharing import ProgramSharing, pad_state, unpad_state
from models.compile.store import ProgramStore

__all__ = ["Compiled", "Compiler", "ProgramSharing", "ProgramStore", "default_compiler", "pad_state",
           "provisional_mapping", "unpad_state", "work_bucket"]
