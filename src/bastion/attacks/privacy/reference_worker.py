"""One worker of `references.train_references`: `python -m bastion.attacks.privacy.reference_worker JOB OUT I,J,..`.

Reads the pickled job its parent wrote a moment earlier, trains reference models I, J, ... and writes their
log-probabilities to OUT (.npz, arrays only). A fresh interpreter, so the parent's autograd threads are never forked.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str]) -> None:
    from bastion.attacks.privacy.references import train_share

    job_path, out_path, indices = argv
    job = pickle.loads(Path(job_path).read_bytes())  # noqa: S301 - written by our parent process
    outputs = train_share(job, [int(i) for i in indices.split(",") if i])
    with open(out_path, "wb") as f:
        np.savez(f, *outputs)


if __name__ == "__main__":
    main(sys.argv[1:])
