"""ppdgm: write a generative model once as a Pyro program, train it with any DGM algorithm.

``ppdgm.fit(model, guide, data, method="iwae", num_particles=5)`` trains a plain Pyro model/guide
pair; the algorithm is the ``method`` argument. See README.md and docs/.
"""

from ppdgm import data, evaluate
from ppdgm.data import images, streams
from ppdgm.data.streams import Interleaved
from ppdgm.errors import PpdgmError, UsageError
from ppdgm.evaluate import fidelity, sampling
from ppdgm.evaluate.sampling import sample
from ppdgm.methods import adversarial
from ppdgm.methods.base import Method, available_methods, get_method, register
from ppdgm.methods.engine import Engine
from ppdgm.programs.batch import Batch
from ppdgm.programs.pair import ConventionError, ProgramPair
from ppdgm.programs.sides import Auxiliary, DataSide
from ppdgm.programs.sites import ProgramError
from ppdgm.runtime.storage import CheckpointError
from ppdgm.training.fit import fit
from ppdgm.training.loop import TrainingInterrupted
from ppdgm.training.nonfinite import TrainingDiverged
from ppdgm.training.run import Run, load_params

__version__ = "0.1.0"

__all__ = [
    "Auxiliary",
    "Batch",
    "CheckpointError",
    "ConventionError",
    "DataSide",
    "Interleaved",
    "Engine",
    "Method",
    "ProgramError",
    "ProgramPair",
    "PpdgmError",
    "UsageError",
    "Run",
    "TrainingDiverged",
    "TrainingInterrupted",
    "adversarial",
    "available_methods",
    "data",
    "evaluate",
    "fidelity",
    "images",
    "fit",
    "get_method",
    "load_params",
    "register",
    "sample",
    "sampling",
    "streams",
]
