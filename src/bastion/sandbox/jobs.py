"""What the worker runs: whole jobs (load the model, run the attack, defense or probe), yielding data messages.

The same functions run in-process with `--no-sandbox`, so both paths give the same results.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bastion.core.data import Dataset
from bastion.sandbox.spec import JobSpec, build

Message = dict[str, Any]
_LOADED: list[bool] = []  # this worker has loaded the model once already


def preload(job: str = "assess") -> None:
    """Import what the coming job needs before its request arrives: PyTorch and the loaders; for `assess` the
    runner, for `attack` and `defend` the threat families that judge the result (the request names the one
    module of its attack or defense, imported then)."""
    import torch  # noqa: F401

    import bastion.models  # noqa: F401

    if job == "assess":
        import bastion.assess.runner  # noqa: F401
    else:
        from bastion.families import registry

        registry()


def load_checked(load: dict[str, Any], datasets: list[Dataset | None]) -> Any:
    """The target of `load` (keyword arguments of `bastion.models.load_target`), checked against the datasets."""
    from bastion.core.data import check_fit
    from bastion.models import load_target

    target = load_target(**load)
    for dataset in datasets:
        check_fit(dataset, target)
    return target


def attack_job(spec: JobSpec, evaluation: Dataset | None, load: dict[str, Any], deadline: float | None = None,
               seconds: float | None = None) -> Iterator[Message]:
    """Build the attack of `spec`, load its data and the model, run it, and send the judged result. After
    `deadline` (a time.time() value; `seconds` long) the target answers no more queries: the attack stops at its
    next batch boundary and the result is partial."""
    built = build(spec, evaluation)
    target = load_checked({**load, "data": built.model_data}, [built.evaluation, *built.datasets.values()])
    target.counter.stop_at(deadline, seconds)
    yield {"type": "loaded"}
    from bastion.families import judged  # the family plug-in judges what the attack measured

    yield {"type": "result", "data": judged(built.obj.run(target, built.evaluation, **built.datasets)).to_dict()}


def defend_job(spec: JobSpec, evaluation: Dataset | None, training: Dataset | None, load: dict[str, Any],
               out_name: str | None, out_dir: str | None = None) -> Iterator[Message]:
    """Run a defense; with `out_name`, save under `out_dir` (scratch/out in the sandbox) what it produced: a
    training-data screen's cleaned set (.npz) or the defended model, and name the file."""
    from bastion.core.errors import ParameterError
    from bastion.models.metadata import ModelMetadata

    built = build(spec, evaluation, training)
    defense = built.obj
    target = load_checked({**load, "data": built.model_data}, [built.evaluation, *built.datasets.values()])
    yield {"type": "loaded"}
    from bastion.families import judged

    result = judged(defense.run(target, built.evaluation, **built.datasets))
    if out_name is not None:
        folder = Path(out_dir or "out")
        folder.mkdir(parents=True, exist_ok=True)
        artifact, cleaned = getattr(defense, "artifact_", None), getattr(defense, "cleaned_", None)
        if cleaned is not None:
            from bastion.core.data import save_npz

            save_npz(cleaned, folder / out_name)
        elif artifact is not None:
            from bastion.models.export import save_model

            meta = ModelMetadata(n_classes=target.n_classes, input_shape=list(target.input_shape),
                                 bounds=list(target.bounds), name=f"{target.name} + {spec.name}")
            save_model(artifact, folder / out_name, meta)
        else:
            raise ParameterError(f"defense '{spec.name}' produces no model to save with --out")
        yield {"type": "file", "name": out_name}
    yield {"type": "result", "data": result.to_dict()}


def describe_job(inputs: Any) -> Iterator[Message]:
    info = inputs.describe()
    _LOADED.append(True)
    yield {"type": "loaded"}
    yield {"type": "result", "data": vars(info)}


def assess_jobs(inputs: Any, jobs: list[Any], sections: dict[str, dict[str, Any]], seed: int) -> Iterator[Message]:
    """Every job in turn; each outcome goes back as soon as it is done (the parent records it at once)."""
    from bastion.assess.runner import execute_job

    if not _LOADED:  # a fresh worker: the load deadline ends once the model has loaded
        inputs.load_target()
    _LOADED.append(True)
    yield {"type": "loaded"}
    for job in jobs:
        outcome = execute_job(inputs, job, sections[job.family], seed)
        yield {"type": "outcome", "data": outcome.to_dict()}


def probe_job(load: dict[str, Any], batch: int = 4, seed: int = 0) -> Iterator[Message]:
    """Load a model and run forward passes on inputs of its declared shape (zeros, then uniform noise in bounds)."""
    result = probe_forward(load, batch, seed)
    yield {"type": "loaded"}
    yield {"type": "result", "data": result}


def probe_forward(load: dict[str, Any], batch: int = 4, seed: int = 0) -> dict[str, Any]:
    import torch

    from bastion.models import load_target

    start = time.perf_counter()
    target = load_target(**load)
    low, high = target.bounds
    generator = torch.Generator().manual_seed(seed)
    noise = low + (high - low) * torch.rand(batch, *target.input_shape, generator=generator)
    labels = target.labels(torch.cat([torch.zeros(1, *target.input_shape), noise]).to(target.device))
    return {"input_shape": list(target.input_shape), "n_classes": target.n_classes, "bounds": [low, high],
            "samples": batch + 1, "labels": [int(v) for v in labels.tolist()],
            "seconds": time.perf_counter() - start}


_SERVED: dict[str, Any] = {}  # the model `bastion guard` serves from this worker (loaded once by serve_load)


def serve_load(load: dict[str, Any]) -> Iterator[Message]:
    """Load the model `bastion guard` serves and keep it for `serve_predict`; answer its description."""
    from bastion.models import load_target

    target = _SERVED["target"] = load_target(**load)
    yield {"type": "loaded"}
    yield {"type": "result", "data": {"n_classes": target.n_classes, "input_shape": list(target.input_shape),
                                      "bounds": list(target.bounds), "output": target.output_kind}}


def serve_predict(inputs: Any) -> Iterator[Message]:
    """One batch through the served model: probabilities (labels for a label-only model), as nested lists."""
    from bastion.core.errors import BastionError

    target = _SERVED.get("target")
    if target is None:
        raise BastionError("no model loaded in this worker")
    out = target.labels(inputs) if target.output_kind == "labels" else target.probabilities(inputs)
    yield {"type": "result", "data": {"outputs": out.detach().cpu().tolist()}}


HANDLERS = {"attack": attack_job, "defend": defend_job, "describe": describe_job, "jobs": assess_jobs,
            "probe": probe_job, "serve_load": serve_load, "serve_predict": serve_predict}
