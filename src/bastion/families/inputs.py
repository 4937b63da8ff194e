"""What an assessment looks at: the model (path or URL), its data, and how to load it as a Target.

`Inputs` is plain data (paths, NumPy datasets, flags) so that it can travel to Ray workers; every job loads its
own fresh Target from it, so query counts and model state never leak from one job into another.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bastion.core.data import Dataset, validate_for_model
from bastion.core.errors import ModelLoadError
from bastion.core.target import Access, Target, TorchTarget

_MATERIALISED: dict[str, str] = {}  # sha256 -> local path of model bytes shipped to this process


def one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def file_sha256(path: str | Path) -> str | None:
    """SHA-256 of a file (None for URLs and folders)."""
    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The module a loader wrapped in PlainModule (TorchScript or exported), else the model itself."""
    from bastion.models.torch_backend import PlainModule

    while isinstance(model, PlainModule):
        model = model.inner
    return model


@dataclass
class ModelInfo:
    """What the plan defaults are sized from: the model's access, shape, bounds and internals."""

    path: str
    format: str
    sha256: str | None
    n_classes: int
    input_shape: list[int]
    bounds: list[float]
    access: str
    white_box: bool
    estimator: bool
    device: str
    name: str
    kind: str = "classifier"  # classifier | language-model (the families that apply: `Family.kinds`)

    @property
    def access_level(self) -> Access:
        return Access.parse(self.access)

    @property
    def is_file(self) -> bool:
        return self.sha256 is not None


@dataclass
class Inputs:
    """Model, evaluation data (--data) and optional training data (--train-data) of one assessment.

    A language model (a `.gguf` file, a Hugging Face folder, an OpenAI-compatible `http(s)://host/v1` URL) needs no
    data: `system_prompt` is the deployed system prompt (`--system-prompt FILE`), `texts` optional member
    (`--train-data`) and non-member (`--data`) texts for membership inference, `lm_options` the endpoint's
    `api_key_env` and `api_model`."""

    model: str
    data: Dataset | None
    train_data: Dataset | None = None
    arch: str | None = None
    trust: bool = False
    access: str | None = None
    device: str = "auto"
    data_path: str | None = None
    train_path: str | None = None
    label: str | None = None
    model_bytes: bytes | None = field(default=None, repr=False)
    model_sha256: str | None = None
    max_queries: int | None = None  # each job's query budget (`--max-queries`): a spent budget keeps partial results
    system_prompt: str | None = field(default=None, repr=False)
    system_prompt_path: str | None = None
    texts: dict[str, list[str]] = field(default_factory=dict, repr=False)
    lm_options: dict[str, str] = field(default_factory=dict)

    @property
    def language_model(self) -> bool:
        """Whether the model is a language model (see `bastion.lm.lm_target.is_language_model`)."""
        from bastion.lm.lm_target import is_language_model

        return is_language_model(self.model)

    def load_lm(self, max_queries: int | None = None, max_new_tokens: int = 256, seed: int = 0) -> Any:
        """A fresh `LMTarget` for one job (greedy, the deployed system prompt); local weights are loaded once per
        process and shared by the jobs (`bastion.lm.hf_target.load_hf_shared`)."""
        from bastion.lm import Sampling, open_lm
        from bastion.lm.lm_target import is_url

        sampling = Sampling(seed=seed, max_new_tokens=max_new_tokens)
        budget = max_queries if max_queries is not None else self.max_queries
        if is_url(self.model) or self.lm_options.get("backend") == "llama-cpp":
            return open_lm(self.model, system_prompt=self.system_prompt, sampling=sampling, max_queries=budget,
                           trust=self.trust, api_key_env=self.lm_options.get("api_key_env"),
                           api_model=self.lm_options.get("api_model"), backend=self.lm_options.get("backend", "auto"))
        from bastion.lm.hf_target import HFTarget, load_hf_shared

        model, tokenizer = load_hf_shared(self.model, self.trust)
        return HFTarget(self.model, model=model, tokenizer=tokenizer, system_prompt=self.system_prompt,
                        sampling=sampling, max_queries=budget)

    def model_path(self) -> str:
        """The model's local path; shipped bytes are written once per process to a private temp file."""
        if self.model_bytes is None or Path(self.model).is_file() or "://" in self.model:
            return self.model
        key = self.model_sha256 or hashlib.sha256(self.model_bytes).hexdigest()
        if key not in _MATERIALISED or not Path(_MATERIALISED[key]).is_file():
            fd, name = tempfile.mkstemp(prefix="bastion-model-", suffix=Path(self.model).suffix)
            with os.fdopen(fd, "wb") as f:
                f.write(self.model_bytes)
            _MATERIALISED[key] = name
        return _MATERIALISED[key]

    def load_target(self, device: str | None = None, max_queries: int | None = None, eager: bool = False) -> Target:
        """A fresh Target for one job, checked against the evaluation data.

        `eager`: turn a TorchScript model into an ordinary nn.Module (built from --arch, weights copied) for
        probes that read or modify the model's layers (backdoor scanners)."""
        from bastion.models import load_target

        if self.language_model:
            raise ModelLoadError(f"{self.model} is a language model: it has no classifier target")
        if self.data is None:
            raise ModelLoadError("a classifier needs evaluation data (--data)")
        target = load_target(self.model_path(), data=self.data, arch=self.arch, device=device or self.device,
                             trust=self.trust, max_queries=max_queries if max_queries is not None else self.max_queries,
                             access=self.access)
        validate_for_model(self.data, target.n_classes, target.input_shape)
        if self.train_data is not None:
            validate_for_model(self.train_data, target.n_classes, target.input_shape)
        if eager and isinstance(target, TorchTarget) and isinstance(_unwrapped(target.model), torch.jit.ScriptModule):
            target = self._eager(target)
        return target

    def _eager(self, target: TorchTarget) -> TorchTarget:
        """The model rebuilt from --arch with the file's weights; without --arch, the TorchScript module inside
        a plain nn.Module (enough for gradient-based scanners, not for those that read named layers)."""
        from bastion.models.factory import build

        if self.arch:
            model = build(self.arch)
            try:
                model.load_state_dict(_unwrapped(target.model).state_dict(), strict=True)
            except RuntimeError as exc:
                raise ModelLoadError(f"{self.model}: its weights do not fit --arch {self.arch} ({one_line(exc)})") \
                    from None
        else:
            model = target.model  # the loader's PlainModule: gradients work, named layers are not readable
        eager = TorchTarget(model, target.input_shape, n_classes=target.n_classes, bounds=target.bounds,
                            device=target.device, max_queries=target.counter.budget, name=target.name)
        return eager

    def describe(self) -> ModelInfo:
        """Load the model once and record what the plan defaults depend on."""
        from bastion.models import sniff_format
        from bastion.models.http_backend import redacted

        if self.language_model:
            return self._describe_lm()
        target = self.load_target()
        base = getattr(target, "base", target)
        return ModelInfo(
            path=redacted(self.model), format=sniff_format(self.model_path()), sha256=self.model_sha256 or file_sha256(
                self.model), n_classes=target.n_classes, input_shape=list(target.input_shape),
            bounds=list(target.bounds), access=target.access.name.lower(),
            white_box=isinstance(base, TorchTarget) and target.access >= Access.GRADIENTS,
            estimator=getattr(base, "estimator", None) is not None, device=str(target.device), name=target.name)

    def _describe_lm(self) -> ModelInfo:
        from bastion.lm.lm_target import is_url
        from bastion.models.http_backend import redacted

        lm = self.load_lm()
        url = is_url(self.model)
        fmt = "openai-endpoint" if url else "gguf" if Path(self.model).suffix.lower() == ".gguf" else "hf-folder"
        device = "remote" if url else str(next(lm.model.parameters()).device) if hasattr(lm, "model") else "cpu"
        return ModelInfo(path=redacted(self.model), format=fmt, sha256=self.model_sha256 or file_sha256(self.model),
                         n_classes=0, input_shape=[], bounds=[], access=lm.access, white_box=lm.access == "white-box",
                         estimator=False, device=device, name=Path(redacted(self.model).rstrip("/")).name
                         if not url else redacted(self.model), kind="language-model")

    def summary(self) -> dict[str, Any]:
        """Plain description of the inputs for reports and the run store (an `api_key` in a URL hidden)."""
        from bastion.models.http_backend import redacted

        def data_info(d: Dataset | None, path: str | None) -> dict[str, Any] | None:
            if d is None:
                return None
            return {"path": path, "name": d.name, "n": len(d), "n_classes": d.n_classes,
                    "input_shape": list(d.input_shape)}
        return {"model": redacted(self.model), "arch": self.arch, "access": self.access, "trust": self.trust,
                "label": self.label, "data": data_info(self.data, self.data_path),
                "train_data": data_info(self.train_data, self.train_path),
                **({"max_queries": self.max_queries} if self.max_queries is not None else {}),
                **(self._lm_summary() if self.language_model else {})}

    def _lm_summary(self) -> dict[str, Any]:
        """What a report and `--resume` need of a language model's inputs; the system prompt itself is not
        written (it may hold secrets): its file and SHA-256 are."""
        prompt = self.system_prompt
        return {"language_model": True, "system_prompt": {"path": self.system_prompt_path, "sha256": hashlib.sha256(
                    prompt.encode()).hexdigest() if prompt is not None else None},
                "texts": {"members": {"path": self.train_path, "n": len(self.texts.get("members", []))},
                          "nonmembers": {"path": self.data_path, "n": len(self.texts.get("nonmembers", []))}},
                "lm_options": dict(self.lm_options)}
