"""One comparison run on every rank of a torchrun job: ``python -m ppdgm.compare.worker SPEC_JSON METHOD SEED``.

:func:`ppdgm.compare.compare` launches this for specs with ``nproc_per_run > 1``; each rank joins the
process group, trains its share, and rank 0 evaluates and writes the run's result.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ppdgm.compare.runner import deterministic_run
from ppdgm.compare.spec import Spec, run_dir
from ppdgm.runtime import distributed
from ppdgm.runtime.devices import resolve_device


def main(argv: list[str]) -> int:
    spec_file, method_index, seed = argv[0], int(argv[1]), int(argv[2])
    spec = Spec.from_dict(json.loads(Path(spec_file).read_text()))
    distributed.context(resolve_device(spec.device))
    method = spec.methods[method_index]
    deterministic_run(spec, method, seed, run_dir(spec, method, seed), "--tensorboard" in argv[3:])
    return 0


if __name__ == "__main__":
    distributed.exit_job(main(sys.argv[1:]))
