"""Untrusted model code runs here: a sandboxed worker (bubblewrap namespaces, seccomp, rlimits, a deadline) that
runs a whole job and sends results back as data, and dynamic analysis of what the model tried to do.
See docs/sandbox.md."""

from bastion.sandbox.observe import Observation
from bastion.sandbox.policy import SandboxPolicy, carries_code
from bastion.sandbox.sandboxed_run import SandboxOptions, SandboxRun, open_sandbox, run_job
from bastion.sandbox.session import Sandbox, SandboxError, SandboxTimeout

__all__ = ["Observation", "Sandbox", "SandboxError", "SandboxOptions", "SandboxPolicy", "SandboxRun",
           "SandboxTimeout", "carries_code", "open_sandbox", "run_job"]
