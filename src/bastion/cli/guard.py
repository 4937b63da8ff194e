"""`bastion guard serve MODEL` (a protected inference service) and `bastion guard log` (its audit log)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import typer

from bastion.core.errors import ParameterError

AUDIT_HELP = "the audit log (SQLite, WAL)"


def _require_extra() -> None:
    import importlib.util

    missing = [m for m in ("starlette", "uvicorn", "prometheus_client") if importlib.util.find_spec(m) is None]
    if missing:
        raise ParameterError(f"bastion guard needs {', '.join(missing)}: pip install 'bastion[guard]'")


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="A protected inference service for a model, and its audit log.", no_args_is_help=True)
    app.add_typer(group, name="guard")

    @group.command("serve", help="Serve MODEL behind a policy of rules (docs/guard.md): a classifier with Bastion's "
                                 "HTTP protocol, a language model (.gguf or Hugging Face folder) with the "
                                 "OpenAI-compatible chat API. Stops on SIGTERM/SIGINT after draining requests.")
    def serve_command(
        model: str = typer.Argument(..., help="model file (loaded in the sandbox when it carries code), or a "
                                    "language model (.gguf, HF folder: no code, loaded in this process after a scan)"),
        port: int = typer.Option(8000, "--port", min=0, max=65535),
        host: str = typer.Option("127.0.0.1", "--host", help="address to bind (loopback by default)"),
        policy: Path | None = typer.Option(None, "--policy", help="YAML policy (default: input checks only)"),
        data: Path | None = typer.Option(None, "--data", help="reference data: calibrates the detectors and the "
                                         "query-distribution monitor"),
        audit: Path = typer.Option(Path("bastion-guard.sqlite"), "--audit", help=AUDIT_HELP),
        log_inputs: bool = typer.Option(False, "--log-inputs", help="also store raw inputs in the audit log"),
        arch: str | None = typer.Option(None, "--arch", help="module:factory for .safetensors"),
        trust: bool = typer.Option(False, "--trust", help="load a pickle-based file after a clean scan"),
        no_sandbox: bool = typer.Option(False, "--no-sandbox", help="load the model in this process (unisolated)"),
        drain: float = typer.Option(10.0, "--drain", min=0, help="seconds to finish requests on shutdown"),
        system_prompt: Path | None = typer.Option(None, "--system-prompt", help="language models: a file with the "
                                                  "system prompt used when a request brings none"),
        temperature: float = typer.Option(0.0, "--temperature", min=0, max=100,
                                          help="language models: sampling temperature (0: greedy)"),
    ) -> None:
        _require_extra()
        from bastion.guard.server import build_guard, build_llm_guard, is_language_model, serve

        if is_language_model(model):
            if data is not None or log_inputs or arch:
                raise ParameterError("--data, --log-inputs and --arch apply to classifiers, not language models")
            prompt = None
            if system_prompt is not None:
                try:
                    prompt = system_prompt.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    raise ParameterError(f"--system-prompt {system_prompt}: cannot read it ({exc})") from None
            lm_guard = build_llm_guard(model, policy=policy, audit=audit, trust=trust, sandbox=not no_sandbox,
                                       system_prompt=prompt, temperature=temperature)
            typer.echo(f"bastion guard: serving {model} (in-process, scanned) on http://{host}:{port}/v1, "
                       f"audit log {audit}", err=True)
            serve(lm_guard, host, port, drain)
            return
        guard = build_guard(model, policy=policy, data=data, audit=audit, arch=arch, trust=trust,
                            sandbox=not no_sandbox, log_inputs=log_inputs)
        typer.echo(f"bastion guard: serving {model} ({guard.model.isolation}) on http://{host}:{port}/predict, "
                   f"audit log {audit}", err=True)
        serve(guard, host, port, drain)

    @group.command("log", help="Print the audit log, oldest first.")
    def log_command(
        audit: Path = typer.Option(Path("bastion-guard.sqlite"), "--audit", help=AUDIT_HELP),
        key: str | None = typer.Option(None, "--key", help="only this key id"),
        since: str | None = typer.Option(None, "--since", help="30s, 10m, 2h, 1d or an ISO date/time"),
        limit: int | None = typer.Option(None, "--limit", min=1),
        as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
        summary: bool = typer.Option(False, "--summary", help="requests, verdicts and rule hits per key instead "
                                     "(as `bastion report guard`)"),
    ) -> None:
        from bastion.guard.audit_log import parse_since, read_log

        if summary:
            from bastion.store.guard_log import guard_log_summary, render_guard_summary

            found = guard_log_summary(audit, None if since is None else parse_since(since))
            if key is not None:
                found["keys"] = {k: v for k, v in found["keys"].items() if k == key}
            typer.echo(json.dumps(found) if as_json else render_guard_summary(found), nl=as_json)
            return
        entries = read_log(audit, key, None if since is None else parse_since(since), limit)
        for e in entries:
            if as_json:
                typer.echo(json.dumps(e.to_dict()))
            else:
                when = datetime.fromtimestamp(e.ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
                typer.echo(f"{when} {e.key} {e.tier or '-'} n={e.n_inputs} {e.status} {e.verdict} "
                           f"{e.latency_ms:.1f}ms {','.join(e.rules) or '-'}")
