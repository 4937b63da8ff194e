"""`bastion assess MODEL --data TEST [--train-data TRAIN] [--plan plan.yaml] [--out DIR] [--fail-on SEV]
[--backend ray [--address ADDR]] [--resume RUN]`: every threat family in one command, with a graded report."""

from __future__ import annotations

from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import typer

from bastion.assess.api import assess_inputs, build_plan, choose_device
from bastion.assess.assessment import Assessment
from bastion.assess.plan import Plan, read_plan_file
from bastion.assess.runner import make_backend
from bastion.cli.common import check_seed, console, fail_on_level, load_data
from bastion.cli.outputs import check_report_files, prepare_output_dir
from bastion.core.errors import ParameterError
from bastion.core.results import severity_rank
from bastion.families.availability import with_budgets
from bastion.families.inputs import Inputs, file_sha256
from bastion.lm.lm_target import is_language_model
from bastion.report import FILE_NAMES, FORMATS, write_reports
from bastion.report.terminal import print_summary
from bastion.sandbox import SandboxOptions, open_sandbox
from bastion.sandbox.assess_backend import SandboxBackend, isolation, run_job_sandboxed
from bastion.sandbox.assess_backend import describe as describe_in
from bastion.sandbox.cli_jobs import no_sandbox_option, timeout_option
from bastion.sandbox.spec import plan_files
from bastion.store import RunStore, new_run_id


def exit_code(a: Assessment, fail_on: str | None) -> int:
    """1 when a finding reaches `--fail-on`, or when the assessment is incomplete and `--fail-on` is set."""
    level = fail_on_level(fail_on)
    if level is None:
        return 0
    worst = a.worst_severity()
    if worst is not None and severity_rank(worst) >= level:
        return 1
    return 0 if a.complete else 1


def parse_formats(text: str) -> tuple[str, ...]:
    chosen = tuple(f.strip().lower() for f in text.split(",") if f.strip())
    bad = [f for f in chosen if f not in FORMATS]
    if bad or not chosen:
        raise ParameterError(f"--format takes a comma list of {', '.join(FORMATS)}, got {text!r}")
    return chosen


def read_system_prompt(path: Path | str | None) -> str | None:
    """The deployed system prompt (UTF-8 text), or None."""
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ParameterError(f"--system-prompt {path}: cannot read it as UTF-8 text "
                             f"({getattr(exc, 'strerror', None) or type(exc).__name__})") from None


def lm_inputs(model: str, data: Path | None, train_data: Path | None, system_prompt: Path | None, *,
              trust: bool, device: str, max_queries: int | None, lm_options: dict[str, str]) -> Inputs:
    """The inputs of a language-model assessment: --data and --train-data are optional non-member and member
    texts (one per line, or .jsonl with a `text` field) for membership inference."""
    from bastion.attacks.llm.token_scores import read_texts

    texts = {}
    if data is not None:
        texts["nonmembers"] = read_texts(data, "--data (non-member texts)")
    if train_data is not None:
        texts["members"] = read_texts(train_data, "--train-data (member texts)")
    return Inputs(model=model, data=None, trust=trust, device=device, data_path=str(data) if data else None,
                  train_path=str(train_data) if train_data else None, max_queries=max_queries,
                  system_prompt=read_system_prompt(system_prompt),
                  system_prompt_path=str(system_prompt) if system_prompt else None, texts=texts,
                  lm_options=lm_options)


def _resume_lm(row: dict, saved: dict, device: str | None, plan: Plan) -> Inputs:
    """A language-model run's inputs again: the system prompt must be the one the run started with."""
    prompt_info = saved.get("system_prompt") or {}
    texts = saved.get("texts") or {}
    inputs = lm_inputs(saved["model"], _path(texts.get("nonmembers")), _path(texts.get("members")),
                       _path(prompt_info), trust=bool(saved.get("trust")), device=device or plan.device,
                       max_queries=None, lm_options=dict(saved.get("lm_options") or {}))
    digest = inputs.summary()["system_prompt"]["sha256"]
    if digest != prompt_info.get("sha256"):
        raise ParameterError(f"the system prompt changed since run {row['id']} started: start a new assessment")
    return inputs


def _path(info: dict | None) -> Path | None:
    return Path(info["path"]) if info and info.get("path") else None


def resume_inputs(store: RunStore, run_ref: str, device: str | None) -> tuple[str, Inputs, Plan]:
    """The inputs and plan recorded for a run; refuses a model file that changed since."""
    row = store.run(run_ref)
    saved = row["inputs"]
    data_info, train_info = saved.get("data") or {}, saved.get("train_data") or {}
    if row["model_sha256"] and file_sha256(saved["model"]) != row["model_sha256"]:
        raise ParameterError(f"{saved['model']} changed since run {row['id']} started: start a new assessment")
    if saved.get("language_model"):
        plan = Plan.from_dict(row["plan"])
        return row["id"], _resume_lm(row, saved, device, plan), plan
    if not data_info.get("path"):
        raise ParameterError(f"run {row['id']} was not started from data files and cannot be resumed")
    store.check_data_unchanged(row)
    plan = Plan.from_dict(row["plan"])
    data = load_data(Path(data_info["path"]), saved.get("label"), None, "data")
    train = load_data(Path(train_info["path"]), saved.get("label"), None, "train") if train_info.get("path") else None
    inputs = Inputs(model=saved["model"], data=data, train_data=train, arch=saved.get("arch"),
                    trust=bool(saved.get("trust")), access=saved.get("access"), device=device or plan.device,
                    data_path=data_info["path"], train_path=train_info.get("path"), label=saved.get("label"))
    return row["id"], inputs, plan


def register(app: typer.Typer) -> None:
    @app.command(help="Assess a model against every threat family and write a graded report "
                      "(HTML, JSON, SARIF, Markdown).")
    def assess(
        model: str | None = typer.Argument(None, help="model file or http(s) URL; a language model: a .gguf "
                                           "file, a Hugging Face folder or an OpenAI-compatible http(s)://host/v1"),
        data: Path | None = typer.Option(None, "--data", help="held-out evaluation data (a language model: "
                                         "optional non-member texts)"),
        train_data: Path | None = typer.Option(None, "--train-data", help="training data, enables privacy (a "
                                               "language model: optional member texts)"),
        system_prompt: Path | None = typer.Option(None, "--system-prompt", help="language models: the deployed "
                                                  "system prompt (a canary is added to it for the leak probe)"),
        api_key_env: str | None = typer.Option(None, "--api-key-env", help="language-model endpoints: the "
                                               "environment variable holding the API key"),
        api_model: str | None = typer.Option(None, "--api-model", help="language-model endpoints: the model "
                                             "name (default: the first /v1/models lists)"),
        label: str | None = typer.Option(None, "--label", help="label column of CSV data"),
        arch: str | None = typer.Option(None, "--arch", help="module:factory of the model's architecture"),
        plan_file: Path | None = typer.Option(None, "--plan", help="YAML plan (see docs/plan.md)"),
        print_plan: bool = typer.Option(False, "--print-plan", help="print the effective plan as YAML and stop"),
        out: Path = typer.Option(Path("bastion-report"), "--out", help="report folder"),
        formats: str = typer.Option(",".join(FORMATS), "--format", help="report formats (comma list)"),
        store_path: Path | None = typer.Option(None, "--store", help="run-history database ($BASTION_STORE)"),
        no_store: bool = typer.Option(False, "--no-store", help="do not record this run"),
        resume: str | None = typer.Option(None, "--resume", help="resume an interrupted run (id, prefix or last)"),
        backend: str = typer.Option("local", "--backend", help="local or ray"),
        address: str | None = typer.Option(None, "--address", help="Ray cluster address (with --backend ray)"),
        device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda (default: the plan's)"),
        seed: int | None = typer.Option(None, "--seed", help="seed (default: the plan's, else 0)"),
        access: str | None = typer.Option(None, "--access", help="restrict to gradients, scores or labels"),
        trust: bool = typer.Option(False, "--trust", help="allow pickle-based files that scanned clean"),
        fail_on: str | None = typer.Option(None, "--fail-on", help="exit 1 at this severity or above"),
        max_queries: int | None = typer.Option(None, "--max-queries", help="query budget of each job: a spent "
                                               "budget keeps what was measured (partial; --resume continues it)"),
        latency_budget: float | None = typer.Option(None, "--latency-budget", help="availability: per-input "
                                                    "latency budget in ms (p95 of attack inputs above it: high)"),
        token_budget: int | None = typer.Option(None, "--token-budget", help="availability: generated tokens per "
                                                "request (attack mean above it: high)"),
        quiet: bool = typer.Option(False, "--quiet", help="no progress output"),
        no_sandbox: bool = no_sandbox_option(),
        timeout: float | None = timeout_option(),
    ) -> None:
        fmts = parse_formats(formats)
        fail_on_level(fail_on)
        if max_queries is not None and max_queries < 1:
            raise ParameterError(f"--max-queries must be at least 1, got {max_queries}")
        if seed is not None:
            check_seed(seed)
        if resume and (latency_budget is not None or token_budget is not None):
            raise ParameterError("--resume keeps the stored run's plan: --latency-budget and --token-budget "
                                 "cannot change it")
        override = with_budgets(read_plan_file(plan_file) if plan_file and not resume else {}, latency_budget,
                                token_budget)
        device = choose_device(device, override)  # decided before the plan is sized
        options = SandboxOptions(enabled=not no_sandbox, timeout=timeout, device=device or "auto")
        runner_backend = make_backend(backend, address, describe=partial(isolation, options),
                                      run_sandboxed=partial(run_job_sandboxed, options=options)
                                      if options.enabled else None)
        store = None if no_store else RunStore(store_path)
        if resume:
            if no_store:
                raise ParameterError("--resume needs the run store (drop --no-store)")
            if plan_file is not None or model is not None:
                raise ParameterError("--resume takes the model, data and plan from the stored run; pass neither")
            run_id, inputs, plan = resume_inputs(store, resume, device)
            inputs.max_queries = max_queries  # a resumed run gets the budget given now (none: unlimited)
        elif model is not None and is_language_model(model):
            options_lm = {k: v for k, v in (("api_key_env", api_key_env), ("api_model", api_model)) if v}
            inputs = lm_inputs(model, data, train_data, system_prompt, trust=trust, device=device or "auto",
                               max_queries=max_queries, lm_options=options_lm)
            run_id = None
        else:
            if system_prompt is not None or api_key_env or api_model:
                raise ParameterError("--system-prompt, --api-key-env and --api-model are for language models (a "
                                     ".gguf file, a Hugging Face folder or an http(s)://host/v1 URL)")
            if model is None or data is None:
                raise ParameterError("bastion assess needs MODEL and --data (or --resume RUN)")
            evaluation = load_data(data, label, None, "data")
            training = load_data(train_data, label, None, "train") if train_data else None
            inputs = Inputs(model=model, data=evaluation, train_data=training, arch=arch, trust=trust,
                            access=access, device=device or "auto", data_path=str(data),
                            train_path=str(train_data) if train_data else None, label=label,
                            max_queries=max_queries)
            run_id = None
        if not print_plan:  # an unusable report folder is found now, not after the run
            sources = [inputs.model, inputs.data_path, inputs.train_path, plan_file, store and store.path]
            prepare_output_dir(out, sources)
            check_report_files(out, [FILE_NAMES[f] for f in fmts] + ["plan.yaml"], sources)
        run_id = run_id or new_run_id()
        with ExitStack() as stack:
            if store is not None and not print_plan:  # a job stopped by a budget keeps its state there
                stack.enter_context(store.checkpoints(run_id))
            run_assessment(inputs, run_id, override, plan if resume else None, seed, device, store, options,
                           runner_backend, backend, print_plan, fmts, out, fail_on, quiet)


def run_assessment(inputs: Inputs, run_id: str, override: dict, resumed: Plan | None, seed: int | None,
                   device: str | None, store: RunStore | None, options: SandboxOptions, runner_backend: Any,
                   backend: str, print_plan: bool, fmts: list[str], out: Path, fail_on: str | None,
                   quiet: bool) -> None:
    """Open the model (in the sandbox when it carries code), run the plan, write the reports, exit."""
    # language-model formats (safetensors, GGUF) carry no code: loaded in-process after a clean scan
    sandbox = None if inputs.language_model else open_sandbox(inputs.model, inputs.arch, options,
                                                              plan_files(override.get("families")))
    try:
        info = describe_in(sandbox, inputs) if sandbox is not None else inputs.describe()
        if sandbox is not None and backend == "local":
            runner_backend = SandboxBackend(sandbox, options)
        elif sandbox is not None:  # Ray workers start their own sandboxes
            sandbox.close()
            sandbox = None
        if print_plan:
            shown = resumed if resumed else build_plan(inputs, info, override, seed, device)
            typer.echo(shown.to_yaml(), nl=False)
            return
        result = assess_inputs(inputs, plan=override, seed=seed, device=device, store=store, backend=runner_backend,
                               info=info, run_id=run_id, resume=resumed, show_progress=not quiet)
        paths = write_reports(result, out, fmts)
        print_summary(result, paths, console)
    finally:  # every path closes the worker (closing twice is a no-op): an error must not leave it running
        if sandbox is not None:
            sandbox.close()
    code = exit_code(result, fail_on)
    if code:
        raise typer.Exit(code)
