"""A demo early-exit CNN for scikit-learn's digits: three stages, an exit after each, confidence-threshold policy.

Multi-exit networks (as in Shallow-Deep Networks, Kaya et al., ICML 2019) stop computing for an input as soon as an
internal classifier is confident: at inference the model returns the logits of the first exit whose top softmax
probability reaches `threshold` and runs the later stages only on the inputs still undecided, so easy inputs cost
less. DeepSloth (Hong et al., ICLR 2021; `bastion attack availability early-exit`) defeats exactly this saving.

The exit policy is part of the model: `exit_logits(x)` (every exit, differentiable), `exit_depth(x)` (index of the
exit each input takes) and `threshold` survive TorchScript (`save_early_exit(model, "m.pt")`) and eager loading
(`.safetensors` with `--arch bastion.demo.early_exit:early_exit_cnn`); torch.export cannot keep a data-dependent
exit, so `.pt2` is refused. Input (n, 1, 8, 8) in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.training import Trainer
from bastion.models.metadata import ModelMetadata

N_EXITS = 3


class EarlyExitCNN(nn.Module):
    """Three conv stages with an exit after each; `threshold` is the confidence at which an input leaves early."""

    def __init__(self, n_classes: int = 10, threshold: float = 0.9):
        super().__init__()
        if not 0.0 < threshold <= 1.0:
            raise ParameterError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = float(threshold)
        self.n_exits = N_EXITS
        self.stage1 = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.stage3 = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1),
                                    nn.ReLU())
        self.exit1 = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, n_classes))
        self.exit2 = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, n_classes))
        self.exit3 = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, n_classes))

    @torch.jit.export
    def exit_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The logits of every exit for every input (no early stop), shallowest first."""
        h1 = self.stage1(x)
        h2 = self.stage2(h1)
        return [self.exit1(h1), self.exit2(h2), self.exit3(self.stage3(h2))]

    @torch.jit.export
    def exit_depth(self, x: torch.Tensor) -> torch.Tensor:
        """Index (0-based) of the exit each input takes under the confidence policy, shape (n,)."""
        depth = torch.full((x.shape[0],), self.n_exits - 1, dtype=torch.long, device=x.device)
        decided = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        outs = self.exit_logits(x)
        for k in range(self.n_exits - 1):
            sure = (F.softmax(outs[k], dim=-1).amax(dim=-1) >= self.threshold) & ~decided
            depth = torch.where(sure, torch.full_like(depth, k), depth)
            decided = decided | sure
        return depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the exit each input takes; later stages run only on the inputs still undecided."""
        h = self.stage1(x)
        logits = self.exit1(h)
        out = logits.clone()
        active = F.softmax(logits, dim=-1).amax(dim=-1) < self.threshold
        index = torch.nonzero(active).flatten()
        if index.numel() > 0:
            h = self.stage2(h[index])
            logits = self.exit2(h)
            out[index] = logits
            keep = F.softmax(logits, dim=-1).amax(dim=-1) < self.threshold
            index, h = index[keep], h[keep]
            if index.numel() > 0:
                out[index] = self.exit3(self.stage3(h))
        return out


def early_exit_cnn(n_classes: int = 10, threshold: float = 0.9) -> EarlyExitCNN:
    """Factory for `--arch bastion.demo.early_exit:early_exit_cnn` (untrained)."""
    return EarlyExitCNN(n_classes, threshold)


class _AllExits(nn.Module):
    """Adapter for the shared Trainer: the exits' logits side by side, shape (n, n_exits * n_classes)."""

    def __init__(self, model: EarlyExitCNN):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.model.exit_logits(x), dim=-1)


def _all_exits_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the exits (every exit learns the task)."""
    per_exit = out.reshape(len(out), N_EXITS, -1)
    return sum(F.cross_entropy(per_exit[:, k], y) for k in range(N_EXITS)) / N_EXITS


def train_early_exit(train: Dataset, threshold: float = 0.9, epochs: int = 15, seed: int = 0) -> EarlyExitCNN:
    """Train every exit jointly with the project's Trainer (mean cross-entropy over exits); eval mode. One torch
    thread: this model is too small to gain from more, and loses much to contention on a busy machine."""
    torch.manual_seed(seed)
    model = EarlyExitCNN(train.n_classes, threshold)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(epochs=epochs, batch_size=64, lr=2e-3, seed=seed, device="cpu", loss_fn=_all_exits_loss,
                description="training early-exit CNN").fit(_AllExits(model), train.x, train.y)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def save_early_exit(model: EarlyExitCNN, path: str | Path) -> Path:
    """Save with the exit policy: TorchScript (.pt, scripted, not traced) or .safetensors (load with --arch)."""
    from bastion.models.export import save_model

    path = Path(path)
    suffix = path.suffix.lower()
    meta = ModelMetadata(n_classes=model.exit3[-1].out_features, input_shape=[1, 8, 8], bounds=[0.0, 1.0],
                         name=f"early-exit CNN (threshold {model.threshold:g})")
    if suffix in (".pt", ".ts"):
        return save_model(torch.jit.script(model.eval().cpu()), path, meta)
    if suffix == ".safetensors":
        return save_model(model, path, meta)
    raise ParameterError(f"{path}: save the early-exit CNN as .pt (TorchScript) or .safetensors; torch.export "
                         "(.pt2) cannot keep its data-dependent exits")
