"""ppdgm: write a generative model once as a Pyro program, train it with any DGM algorithm.

``ppdgm.fit(model, guide, data, method="iwae", num_particles=5)`` trains a plain Pyro model/guide
pair; the algorithm is the ``method`` argument. See README.md and docs/.
"""

from ppdgm import adversarial, data, evaluate, fidelity, images, sampling, streams
from ppdgm.batch import Batch
from ppdgm.checkpoints import CheckpointError
from ppdgm.divergence import TrainingDiverged
from ppdgm.errors import PpdgmError, UsageError
from ppdgm.method import Engine, Method, available_methods, get_method, register
from ppdgm.programs import Auxiliary, ConventionError, DataSide, ProgramError, ProgramPair
from ppdgm.sampling import sample
from ppdgm.streams import Interleaved
from ppdgm.train import Run, TrainingInterrupted, fit, load_params

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
