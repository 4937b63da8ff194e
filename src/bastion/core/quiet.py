"""Keep torch's TorchScript deprecation warnings off the terminal in Bastion's own processes."""

from __future__ import annotations

import warnings

TORCH_JIT_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"


def quiet_torch_deprecations() -> None:
    """Ignore "`torch.jit.load` is deprecated. Please switch to `torch.export`." (torch >= 2.14) and its kin.

    Bastion loads the TorchScript files users already have; the warning is not theirs to act on there (Bastion's
    own demo models are .pt2). Called by the CLI and the sandboxed worker only, never on `import bastion`."""
    warnings.filterwarnings("ignore", message=TORCH_JIT_DEPRECATED, category=FutureWarning)
