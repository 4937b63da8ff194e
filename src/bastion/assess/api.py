"""The one-call Python API: `bastion.assess(model, data, ...)` returns the `Assessment`.

    import bastion
    report = bastion.assess("model.pt2", "test.npz", train_data="train.npz", arch="pkg.models:build")
    print(report.grade, [f.grade for f in report.families])

`bastion assess` (the CLI) and `bastion demo` run the same path, `assess_inputs`: decide the device, build and
merge the plan once (the defaults of every registered family sized for that device, then the plan file or table,
then `seed` and `device`), run the jobs on the injected backend (local by default) and return the Assessment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bastion.assess.assessment import Assessment
from bastion.assess.defaults import default_plan
from bastion.assess.plan import Plan, read_plan_file
from bastion.assess.runner import Backend, LocalBackend, Runner, RunRecorder
from bastion.core.data import Dataset
from bastion.core.data_files import load_dataset
from bastion.core.errors import ParameterError
from bastion.families.inputs import Inputs, ModelInfo

PlanLike = Plan | dict[str, Any] | str | Path | None


def choose_device(device: str | None, override: dict[str, Any]) -> str | None:
    """The device of the run: the caller's `device`, else the plan's `device`, else None (auto)."""
    if device is not None:
        return device
    planned = override.get("device")
    return str(planned) if planned not in (None, "") else None


def plan_override(plan: PlanLike) -> dict[str, Any]:
    """A plan given as a table, a YAML file or a Plan, as the table merged onto the defaults."""
    if plan is None:
        return {}
    if isinstance(plan, Plan):
        return plan.to_dict()
    if isinstance(plan, dict):
        return plan
    if isinstance(plan, (str, Path)):
        return read_plan_file(plan)
    raise ParameterError(f"plan must be a table, a YAML file or a Plan, got {type(plan).__name__}")


def build_plan(inputs: Inputs, info: ModelInfo, override: dict[str, Any], seed: int | None,
               device: str | None) -> Plan:
    """The plan, built and merged once: the defaults sized for the decided device, the plan on top, then `seed`
    and `device`."""
    extra = {k: v for k, v in (("seed", seed), ("device", device)) if v is not None}
    base_seed = seed if seed is not None else int(override.get("seed", 0) or 0)
    return default_plan(inputs, info, seed=base_seed, device=device or "auto").merged({**override, **extra})


def _dataset(data: Dataset | str | Path | None, label: str | None, role: str) -> tuple[Dataset | None, str | None]:
    if data is None or isinstance(data, Dataset):
        return data, None
    path = Path(data)
    return load_dataset(path, label=label, name=f"{role} ({path.name})"), str(path)


def assess_inputs(inputs: Inputs, *, plan: PlanLike = None, seed: int | None = None, device: str | None = None,
                  store: RunRecorder | None = None, backend: Backend | None = None, info: ModelInfo | None = None,
                  run_id: str | None = None, resume: Plan | None = None, show_progress: bool = False) -> Assessment:
    """Assess prepared inputs. `backend` is injected (LocalBackend, RayBackend, the sandbox's); `info` is the
    model's description when the caller already has it (e.g. from the sandbox); `resume` is the stored plan of
    the run `run_id` to continue (its finished jobs are kept)."""
    if resume is not None:
        built = resume
    else:
        override = plan_override(plan)
        chosen = choose_device(device, override)  # decided before the plan is sized
        if chosen is not None:
            inputs.device = chosen
        info = info or inputs.describe()
        built = build_plan(inputs, info, override, seed, chosen)
        inputs.device = built.device
    runner = Runner(store, backend or LocalBackend(), show_progress=show_progress)
    return runner.run(inputs, built, run_id=run_id, resume=resume is not None, info=info)


def assess(model: str | Path, data: Dataset | str | Path | None = None, *,
           train_data: Dataset | str | Path | None = None, plan: PlanLike = None, device: str | None = "auto",
           seed: int | None = 0, arch: str | None = None, access: str | None = None, trust: bool = False,
           label: str | None = None, store: RunRecorder | None = None, backend: Backend | None = None,
           show_progress: bool = False, system_prompt: str | None = None) -> Assessment:
    """Assess `model` (a file or an http(s) URL) on `data` (a Dataset or a data file) against every registered
    threat family and return the Assessment (grades, findings, sanity checks, results).

    `plan`: a table, a YAML file or a Plan merged onto the defaults; `device`: auto, cpu or cuda (budgets are
    sized for it); `seed`: the same seed gives the same findings; `arch`: module:factory of a weights-only
    model's architecture; `access`: restrict to gradients, scores or labels; `store`: record the run; `backend`:
    where the jobs run (local by default). Runs in this process: the model's code is not sandboxed (the CLI
    sandboxes it).

    A language model (a `.gguf` file, a Hugging Face folder, an `http(s)://host/v1` URL) needs no data:
    `system_prompt` is its deployed system prompt (text); `data`/`train_data`, when given, are lists of non-member
    and member texts for membership inference."""
    from bastion.lm.lm_target import is_language_model

    if is_language_model(model):
        texts = {k: [str(t) for t in v] for k, v in (("nonmembers", data), ("members", train_data))
                 if isinstance(v, (list, tuple))}
        lm = Inputs(model=str(model), data=None, trust=trust, device=device or "auto", system_prompt=system_prompt,
                    texts=texts)
        return assess_inputs(lm, plan=plan, seed=seed, device=device, store=store, backend=backend,
                             show_progress=show_progress)
    evaluation, data_path = _dataset(data, label, "data")
    training, train_path = _dataset(train_data, label, "train")
    if evaluation is None:
        raise ParameterError("assess needs evaluation data")
    inputs = Inputs(model=str(model), data=evaluation, train_data=training, arch=arch, trust=trust, access=access,
                    device=device or "auto", data_path=data_path, train_path=train_path, label=label)
    return assess_inputs(inputs, plan=plan, seed=seed, device=device, store=store, backend=backend,
                         show_progress=show_progress)
