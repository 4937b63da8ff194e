"""White-box language models through `transformers`: a Hugging Face folder or a GGUF file, scanned before loading.

Safety rules: `trust_remote_code` is never set (a config with `auto_map` asks for the model's own Python code and is
refused); weights come from safetensors, or from a GGUF file (dequantised by transformers' GGUF loader), formats
that carry tensors and no code. Pickled weights (`pytorch_model.bin`, `.pt`) load only with `trust` and a clean scan,
through torch's weights-only unpickler. The whole folder or file is scanned first (`bastion.supplychain.scan_path`:
chat templates in tokenizer configs and GGUF metadata, pickles, archives).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bastion.core.errors import ModelLoadError, ParameterError
from bastion.lm.chat_format import FALLBACK_STOPS, cut_at_stop, render_fallback, render_template
from bastion.lm.lm_target import LMTarget, Reply, Sampling

PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_SPECIAL = ("bos_token", "eos_token", "pad_token", "unk_token")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ModelLoadError("language models need the llm extra: pip install 'bastion[llm]'") from None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    return transformers


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not readable JSON ({_first_line(exc)})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def scan_or_refuse(path: Path) -> None:
    """Scan a model file or folder with the supply-chain scanner; refuse it (one line) at medium severity or above."""
    from bastion.supplychain import scan_path

    report = scan_path(path, digest=False)
    if report.errors:
        raise ModelLoadError(f"refusing to load {path.name}: {report.errors[0]}")
    worst = report.worst_finding()
    if worst is not None and not report.is_clean("medium"):
        where = worst.evidence.get("member") or worst.evidence.get("file") or path.name
        raise ModelLoadError(f"refusing to load {path.name}: {worst.severity} finding "
                             f"'{worst.title.split(' (')[0]}' in {where}")


def check_folder(folder: Path, trust: bool) -> bool:
    """Refuse what must not load; True when the weights are safetensors, False for pickled weights under trust."""
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder}: not a Hugging Face model folder (no config.json)")
    for name in ("config.json", "tokenizer_config.json"):
        if (folder / name).is_file() and "auto_map" in _read_json(folder / name):
            raise ModelLoadError(f"refusing {folder.name}: {name} has auto_map, i.e. it needs the model's own Python "
                                 "code; Bastion never runs it (trust_remote_code=False)")
    if any(folder.glob("*.safetensors")):
        return True
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLED_WEIGHTS)
    if not pickled:
        raise ModelLoadError(f"{folder}: no weights (.safetensors) found")
    if not trust:
        raise ModelLoadError(f"refusing {folder.name}: its weights ({pickled[0]}) are pickled; convert them to "
                             "safetensors, or pass --trust to load them after a clean scan (weights-only unpickler)")
    return False


def cache_root() -> Path | None:
    """Where converted GGUF files are kept: $BASTION_LM_CACHE, else ~/.cache/bastion/lm; None when set to "0"."""
    value = os.environ.get("BASTION_LM_CACHE")
    if value == "0":
        return None
    return Path(value) if value else Path.home() / ".cache" / "bastion" / "lm"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _gguf_cache(path: Path) -> Path | None:
    """The safetensors folder converted from this GGUF file (by content hash), or None."""
    root = cache_root()
    return None if root is None else root / f"gguf-{_sha256(path)[:32]}"


def _save_cache(model: Any, tokenizer: Any, cache: Path) -> None:
    """Keep transformers' conversion of a GGUF file (dequantised weights as safetensors, the tokenizer) so that
    the next load skips the conversion (~50 s for Gemma 3 270M on 2 cores); written atomically, best effort."""
    tmp: Path | None = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=cache.parent))
        from safetensors.torch import save_model

        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # the weights are dequantised (float32)
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / ".complete").write_text("converted by bastion from a GGUF file\n")
        os.replace(tmp, cache)
    except (OSError, ValueError, RuntimeError):
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def load_hf(spec: str | Path, trust: bool = False) -> tuple[Any, Any]:
    """The one loader of local LMs: a folder or a `.gguf` file -> (causal LM in eval mode, tokenizer).

    A GGUF file is converted by transformers' GGUF loader once; the conversion is cached as a safetensors folder
    keyed by the file's sha256 (`cache_root()`), scanned again like any folder when it is loaded."""
    path = Path(spec)
    if not path.exists():
        raise ModelLoadError(f"no such model folder or file: {spec}")
    if path.is_file() and path.suffix.lower() == ".gguf":
        scan_or_refuse(path)
        cache = _gguf_cache(path)
        if cache is not None and (cache / ".complete").is_file():
            return load_hf(cache)
        model, tokenizer = _load_gguf(path)
        if cache is not None:
            _save_cache(model, tokenizer, cache)
        return model, tokenizer
    if path.is_dir():
        safetensors = check_folder(path, trust)
        folder, extra = path, {"use_safetensors": safetensors}
    else:
        raise ModelLoadError(f"{spec}: not a language model (expected a Hugging Face folder, a .gguf file or an "
                             "http(s)://host/v1 URL)")
    scan_or_refuse(path)
    return _from_pretrained(path, str(folder), {}, extra)


_LOADED: dict[tuple[str, int, int, bool], tuple[Any, Any]] = {}


def load_hf_shared(spec: str | Path, trust: bool = False) -> tuple[Any, Any]:
    """`load_hf`, once per process for the same file or folder (same path, sizes and modification times): the jobs
    of one assessment share the weights; each gets its own `HFTarget` (counters, budget, system prompt)."""
    path = Path(spec).resolve()
    if not path.exists():
        raise ModelLoadError(f"no such model folder or file: {spec}")
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    stats = [f.stat() for f in files if f.is_file()]
    key = (str(path), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0), bool(trust))
    if key not in _LOADED:
        _LOADED.clear()  # one model at a time: an LM's weights are large
        _LOADED[key] = load_hf(path, trust)
    return _LOADED[key]


def _load_gguf(path: Path) -> tuple[Any, Any]:
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelLoadError(f"{path.name}: not a GGUF file (bad magic)")
    try:
        import gguf  # noqa: F401 - transformers' GGUF loader needs it
    except ImportError:
        raise ModelLoadError("GGUF files need the llm extra: pip install 'bastion[llm]' (package gguf)") from None
    with contextlib.redirect_stderr(io.StringIO()):  # the GGUF loader's progress bar: stderr stays one line
        model, tokenizer = _from_pretrained(path, str(path.parent), {"gguf_file": path.name},
                                            {"gguf_file": path.name})
    if not getattr(tokenizer, "chat_template", None):  # the template in the GGUF header (scanned above)
        from bastion.lm.gguf_meta import gguf_chat_template

        template = gguf_chat_template(path)
        if template:
            tokenizer.chat_template = template
    return model, tokenizer


def _from_pretrained(path: Path, folder: str, tok_extra: dict, extra: dict) -> tuple[Any, Any]:
    tf = _transformers()
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(folder, trust_remote_code=False, **tok_extra)
        model = tf.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False, dtype=torch.float32,
                                                        **extra)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError, AttributeError) as exc:
        raise ModelLoadError(f"{path.name}: cannot load the model: {_first_line(exc)}") from None
    return model.eval(), tokenizer


_clock = time.perf_counter  # the deadline's clock (a test may replace it)


@functools.cache
def _deadline_class() -> type:
    """The stopping criterion class, built once (transformers is imported on first use only)."""
    from transformers import StoppingCriteria

    class Deadline(StoppingCriteria):
        """Halts generation once `seconds` have passed since it was made (checked after every token; `.passed`
        says whether it fired)."""

        def __init__(self, seconds: float | None) -> None:
            self.seconds, self.start, self.passed = seconds, _clock(), False

        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            self.passed = self.seconds is not None and _clock() - self.start >= self.seconds
            return torch.full((input_ids.shape[0],), self.passed, dtype=torch.bool, device=input_ids.device)

    return Deadline


class HFTarget(LMTarget):
    """A local causal LM (HF folder or GGUF through transformers), generating with `model.generate` on CPU/GPU."""

    access = "white-box"
    enforces_deadline = True

    def __init__(self, spec: str, *, trust: bool = False, system_prompt: str | None = None,
                 sampling: Sampling | None = None, max_queries: int | None = None, model: Any = None,
                 tokenizer: Any = None):
        super().__init__(spec, system_prompt=system_prompt, sampling=sampling, max_queries=max_queries)
        if model is None or tokenizer is None:
            model, tokenizer = load_hf(spec, trust)
        self.model, self.tokenizer = model, tokenizer
        template = getattr(tokenizer, "chat_template", None)
        self.template = template if isinstance(template, str) and template.strip() else None
        cfg = model.config
        limit = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
        self.context = int(limit) if isinstance(limit, int) and limit > 0 else None
        self.eos_ids = self._eos_ids()

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, **kwargs: Any) -> HFTarget:
        """Wrap an in-memory (model, tokenizer) pair, e.g. a TinyLM just trained."""
        return cls("<in-memory>", model=model.eval(), tokenizer=tokenizer, **kwargs)

    def model_and_tokenizer(self) -> tuple[Any, Any]:
        return self.model, self.tokenizer

    def render(self, messages: list[dict[str, str]]) -> str:
        msgs = self.with_system(messages)
        if self.template is None:
            return render_fallback(msgs)
        special = {k: getattr(self.tokenizer, k, None) for k in _SPECIAL}
        return render_template(self.template, msgs, special)

    def _ids(self, text: str, add_bos: bool) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        bos = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
        return ([bos] if add_bos and bos is not None else []) + ids

    def _chat(self, messages: list[dict[str, str]], max_new_tokens: int) -> Reply:
        text = self.render(messages)
        # a template writes its own BOS; the fallback starts from BOS as TinyLM trains
        return self._generate(self._ids(text, add_bos=self.template is None), max_new_tokens,
                              FALLBACK_STOPS if self.template is None else ())

    def _complete(self, prompt: str, max_new_tokens: int) -> Reply:
        return self._generate(self._ids(prompt, add_bos=True), max_new_tokens, ())

    @torch.no_grad()
    def _generate(self, ids: list[int], max_new_tokens: int, stops: tuple[str, ...]) -> Reply:
        if self.context is not None:
            if len(ids) >= self.context:
                raise ParameterError(f"prompt of {len(ids)} tokens does not fit the model's context of "
                                     f"{self.context} tokens")
            max_new_tokens = min(max_new_tokens, self.context - len(ids))
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        s = self.sampling
        options: dict[str, Any] = {"do_sample": False} if s.temperature == 0 else {
            "do_sample": True, "temperature": s.temperature, "top_p": s.top_p, "top_k": 0}
        eos = self.eos_ids
        criteria, timer = self._stop_criteria(len(ids), stops), _deadline_class()(self.deadline_s)
        if self.deadline_s is not None:
            criteria.append(timer)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed * 1_000_003 + self.queries)
            out = self.model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                      max_new_tokens=max_new_tokens, eos_token_id=eos or None,
                                      pad_token_id=(eos or [0])[0], return_dict_in_generate=True,
                                      output_logits=True, stopping_criteria=criteria,
                                      **options)
        new = out.sequences[0, len(ids):].tolist()
        finished = ("stop" if new and new[-1] in eos else "length" if len(new) >= max_new_tokens
                    else "deadline" if timer.passed else "length")
        if finished == "stop":
            new = new[:-1]
        logprobs = [float(torch.log_softmax(step[0].double(), -1)[tok])
                    for step, tok in zip(out.logits, new, strict=False)]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        if stops:
            text, hit = cut_at_stop(text, stops)
            finished = "stop" if hit else finished
        logprobs = [x if math.isfinite(x) else -1e30 for x in logprobs]
        return Reply(text, len(ids), len(new), finished, 0.0, logprobs)

    def _stop_criteria(self, start: int, stops: tuple[str, ...]) -> Any:
        """Halt generation once the new text contains a stop string (the text is cut there afterwards)."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        tokenizer = self.tokenizer

        class _Stops(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
                text = tokenizer.decode(input_ids[0, start:].tolist(), skip_special_tokens=True)
                hit = any(s in text for s in stops)
                return torch.full((input_ids.shape[0],), hit, dtype=torch.bool, device=input_ids.device)

        return StoppingCriteriaList([_Stops()] if stops else [])

    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.model.config):
            value = getattr(source, "eos_token_id", None)
            ids.update([value] if isinstance(value, int) else list(value or []))
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        for token in ("<end_of_turn>", "<|eot_id|>", "<|im_end|>"):  # end-of-turn tokens of common templates
            tid = self.tokenizer.convert_tokens_to_ids(token) if token in self.tokenizer.get_vocab() else None
            if isinstance(tid, int):
                ids.add(tid)
        return sorted(ids)
