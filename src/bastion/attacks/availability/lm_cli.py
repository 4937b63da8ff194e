"""`bastion attack availability overgen|eos-suppress MODEL --data PROMPTS [options]` (and the same probes under
`bastion attack llm`): the LM target is opened by `bastion.cli.llm` (MODEL is a Hugging Face folder, a `.gguf` or an
OpenAI-compatible URL; `--max-new-tokens N` is the generation cap measured against), this module reads the natural
prompts and the attack's own options and runs `Overgen` (black-box, Engorgio's over-generation baselines) or
`EOSSuppress` (white-box, Engorgio's EOS escape by GCG). Bad values are one `ParameterError` line.
"""

from __future__ import annotations

from typing import Any

from bastion.attacks.availability.lm import EOSSuppress, Overgen
from bastion.attacks.llm.probe_options import integer, parse_args, read_prompt_rows
from bastion.core.errors import ParameterError
from bastion.core.results import Result

COMMON = {"prompts", "mode", "n-bootstrap", "limit"}
OVERGEN = COMMON | {"placement", "library", "select"}
EOS = COMMON | {"suffix-len", "steps", "top-k", "batch", "horizon", "n-fit", "loss", "init"}


def read_prompts(path: str, what: str = "--data") -> list[str]:
    """Prompts from a text file (one per line) or .jsonl (`{"prompt": ...}` per line); one error line otherwise."""
    prompts = [row["prompt"].strip() for row in read_prompt_rows(path, what)]
    if not prompts:
        raise ParameterError(f"{what} {path}: no prompts (one natural prompt per line)")
    return prompts


def natural_prompts(opts: dict[str, str]) -> list[str]:
    if "prompts" not in opts:
        raise ParameterError("natural prompts are needed: --data FILE (one prompt per line, or .jsonl)")
    prompts = read_prompts(opts["prompts"])
    limit = integer(opts, "limit", 0)
    return prompts[:limit] if limit > 0 else prompts


def common_options(target: Any, opts: dict[str, str], default_mode: str, seed: int) -> dict[str, Any]:
    return {"mode": opts.get("mode", default_mode), "max_new_tokens": target.sampling.max_new_tokens,
            "n_bootstrap": integer(opts, "n-bootstrap", 1000), "seed": seed}


def run_overgen_cli(target: Any, args: list[str], seed: int) -> Result:
    """Over-generation prompts against natural ones: `--placement alone|append`, `--library FILE`, `--mode`,
    `--select K` (try each library prompt once, keep the K that drew the most tokens)."""
    opts = parse_args("overgen", args, OVERGEN)
    library = read_prompts(opts["library"], "--library") if "library" in opts else None
    attack = Overgen(placement=opts.get("placement", "alone"), library=library, select=integer(opts, "select", 0),
                     **common_options(target, opts, "chat", seed))
    return attack.run(target, prompts=natural_prompts(opts))


def run_eos_cli(target: Any, args: list[str], seed: int) -> Result:
    """EOS suppression (white-box): `--suffix-len`, `--steps`, `--top-k`, `--batch`, `--horizon`, `--n-fit`,
    `--loss margin|prob`, `--init TOKEN`, `--mode complete|chat`."""
    opts = parse_args("eos-suppress", args, EOS)
    numbers = {key.replace("-", "_"): integer(opts, key, 0) for key in
               ("suffix-len", "steps", "top-k", "batch", "horizon", "n-fit") if key in opts}
    extra = {k: opts[k] for k in ("loss", "init") if k in opts}
    attack = EOSSuppress(**numbers, **extra, **common_options(target, opts, "complete", seed))
    return attack.run(target, prompts=natural_prompts(opts))

