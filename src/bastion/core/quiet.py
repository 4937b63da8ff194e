"""Keep torch's TorchScript deprecation warnings off the terminal in Bastion's own processes."""

from __future__ import annotations

import warnings

TORCH_JIT_DEPRECATED = r"`torch\.jit\.\w+` is (deprecated|not supported in Python)"  # the latter: Python 3.14+
# torch's own pickling of an exported program's tree specs (e.g. copying a .pt2 module) warns about its own API
TORCH_TREESPEC_DEPRECATED = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


def quiet_torch_deprecations() -> None:
    """Ignore "`torch.jit.load` is deprecated. Please switch to `torch.export`." (torch >= 2.14), its kin, and
    torch's warning about its own tree-spec API when a .pt2 module is copied.

    Bastion loads the TorchScript files users already have; the warning is not theirs to act on there (Bastion's
    own demo models are .pt2). Called by the CLI and the sandboxed worker only, never on `import bastion`."""
    for message in (TORCH_JIT_DEPRECATED, TORCH_TREESPEC_DEPRECATED):
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
