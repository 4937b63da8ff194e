"""The model behind the guard: loaded in the sandboxed worker when its file carries code, queried one batch at a time.

The worker (`bastion.sandbox.jobs.serve_load` / `serve_predict`) keeps the model loaded between requests; each
batch crosses the boundary as a pickled float32 array (parent -> worker, trusted direction) and comes back as a
JSON line of numbers (never unpickled). One thread owns the worker: it runs one batch at a time, and every batch
queued meanwhile is coalesced into its next forward pass. Callers wait on an event (`predict`) or, from the event
loop, on an asyncio future (`predict_async`), so a request costs no thread hand-off of its own.
Models that carry no code (HTTP endpoints) and `--no-sandbox` load in this process.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from bastion.core.errors import ModelLoadError
from bastion.core.target import FunctionTarget


@dataclass(frozen=True)
class ModelInfo:
    n_classes: int
    input_shape: tuple[int, ...]
    bounds: tuple[float, float]
    output: str  # "probabilities" or "labels": what the backend answers

    def describe(self) -> dict[str, Any]:
        return {"n_classes": self.n_classes, "input_shape": list(self.input_shape), "output": self.output,
                "bounds": list(self.bounds)}


@dataclass
class _Pending:
    """One caller's batch: answered through `event` (a thread) or `future` on `loop` (a coroutine)."""

    x: np.ndarray
    event: threading.Event | None = None
    future: asyncio.Future | None = None
    loop: asyncio.AbstractEventLoop | None = None
    out: Any = None
    error: BaseException | None = None

    def deliver(self) -> None:
        if self.event is not None:
            self.event.set()
        elif self.loop is not None and self.future is not None:
            self.loop.call_soon_threadsafe(_settle_future, self.future, self.out, self.error)


def _settle_future(future: asyncio.Future, out: Any, error: BaseException | None) -> None:
    if not future.done():  # a caller that went away (client disconnect) leaves a cancelled future
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(out)


class ServedModel:
    """`predict(x)` -> probabilities (n, classes) or labels (n,) as float32 / int64 arrays."""

    def __init__(self, model: str, *, arch: str | None = None, data: Any = None, trust: bool = False,
                 sandbox: bool = True):
        from bastion.sandbox.sandboxed_run import SandboxOptions, open_sandbox

        self.queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self.runner: threading.Thread | None = None  # started once the model has loaded
        self.sandbox = open_sandbox(model, arch, SandboxOptions(enabled=sandbox), job="serve")
        load = {"path": model, "arch": arch, "trust": trust, "device": "cpu", "data": data}
        if self.sandbox is not None:
            from bastion.sandbox.session import SandboxError

            try:
                described = [m for m in self.sandbox.request("serve_load", load=load) if m["type"] == "result"]
            except SandboxError as exc:
                self.close()
                raise ModelLoadError(str(exc)) from None
            d = described[0]["data"]
            self.isolation = self.sandbox.isolation
            self.target = None
        else:
            from bastion.models import load_target

            self.target = load_target(**load)
            d = {"n_classes": self.target.n_classes, "input_shape": list(self.target.input_shape),
                 "bounds": list(self.target.bounds), "output": self.target.output_kind}
            self.isolation = "in-process"
        output = "labels" if d["output"] == "labels" else "probabilities"
        self.info = ModelInfo(int(d["n_classes"]), tuple(int(v) for v in d["input_shape"]),
                              (float(d["bounds"][0]), float(d["bounds"][1])), output)
        self.runner = threading.Thread(target=self._run, name="guard-model", daemon=True)
        self.runner.start()

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Outputs for one batch (blocking; from any thread but the runner's)."""
        pending = _Pending(np.ascontiguousarray(x, dtype=np.float32), event=threading.Event())
        self.queue.put(pending)
        pending.event.wait()  # type: ignore[union-attr]
        if pending.error is not None:
            raise pending.error
        return pending.out

    async def predict_async(self, x: np.ndarray) -> np.ndarray:
        """Outputs for one batch, awaited on the running event loop."""
        loop = asyncio.get_running_loop()
        pending = _Pending(np.ascontiguousarray(x, dtype=np.float32), future=loop.create_future(), loop=loop)
        self.queue.put(pending)
        return await pending.future  # type: ignore[misc]

    def _run(self) -> None:
        """The runner: wait for a batch, take every batch queued meanwhile too, and run them as one forward pass
        (micro-batching), so the worker's round trip is paid once per pass, not per request."""
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            while True:
                try:
                    more = self.queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self.queue.put(None)  # stop after this pass
                    break
                batch.append(more)
            try:
                out = self._forward(np.concatenate([p.x for p in batch]))
                for p, part in zip(batch, np.split(out, np.cumsum([len(p.x) for p in batch])[:-1]), strict=True):
                    p.out = part
            except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the failure
                for p in batch:
                    p.error = exc
            for p in batch:
                p.deliver()

    def _forward(self, x: np.ndarray) -> np.ndarray:
        if self.sandbox is not None:
            answer = [m for m in self.sandbox.request("serve_predict", inputs=x) if m["type"] == "result"]
            out = np.asarray(answer[0]["data"].get("outputs"), dtype=np.float32)
        elif self.info.output == "labels":
            out = self.target.labels(x).cpu().numpy()
        else:
            out = self.target.probabilities(x).detach().cpu().numpy()
        expected = (len(x),) if self.info.output == "labels" else (len(x), self.info.n_classes)
        if out.shape != expected or not np.all(np.isfinite(out)):
            raise ModelLoadError(f"the served model answered shape {out.shape} (expected {expected}) or non-finite")
        return out.astype(np.int64) if self.info.output == "labels" else out

    def as_target(self) -> FunctionTarget:
        """The served model as a Target (for output hardening and the detectors); queries are not charged."""
        i = self.info
        return FunctionTarget(self.predict, i.n_classes, i.input_shape, i.output, i.bounds, name="guarded model")

    def close(self) -> None:
        if self.runner is not None:
            self.queue.put(None)
            self.runner.join(timeout=60)
            self.runner = None
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None
