"""A small classic-BPF seccomp filter, assembled here and handed to bubblewrap with `--seccomp FD`.

The filter denies (EPERM) the system calls a model never needs and an escape would: ptrace, mount and the new
mount API, namespaces, kernel modules, kexec, bpf, keyrings, perf events, userfaultfd, cross-process memory access
and file-handle tricks. Every other call is allowed; foreign-architecture calls (i386, x32) are denied. See
seccomp(2) and the kernel's Documentation/userspace-api/seccomp_filter.rst for the program format.
"""

from __future__ import annotations

import platform
import struct

# struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_RET_ALLOW, _RET_EPERM = 0x7FFF0000, 0x00050000 | 1
_OFFSET_NR, _OFFSET_ARCH = 0, 4
_X32_BIT = 0x40000000

_DENIED = ("ptrace", "mount", "umount2", "pivot_root", "swapon", "swapoff", "reboot", "sethostname",
           "setdomainname", "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "bpf",
           "keyctl", "add_key", "request_key", "perf_event_open", "userfaultfd", "process_vm_readv",
           "process_vm_writev", "unshare", "setns", "open_by_handle_at", "name_to_handle_at", "acct", "quotactl",
           "kcmp", "fanotify_init", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "mount_setattr",
           "pidfd_getfd", "iopl", "ioperm")

# (AUDIT_ARCH, syscall numbers) from the kernel's syscall tables (x86_64: syscall_64.tbl; arm64: the generic table)
_ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (0xC000003E, {
        "ptrace": 101, "mount": 165, "umount2": 166, "pivot_root": 155, "swapon": 167, "swapoff": 168, "reboot": 169,
        "sethostname": 170, "setdomainname": 171, "init_module": 175, "finit_module": 313, "delete_module": 176,
        "kexec_load": 246, "kexec_file_load": 320, "bpf": 321, "keyctl": 250, "add_key": 248, "request_key": 249,
        "perf_event_open": 298, "userfaultfd": 323, "process_vm_readv": 310, "process_vm_writev": 311,
        "unshare": 272, "setns": 308, "open_by_handle_at": 304, "name_to_handle_at": 303, "acct": 163,
        "quotactl": 179, "kcmp": 312, "fanotify_init": 300, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "mount_setattr": 442, "pidfd_getfd": 438, "iopl": 172, "ioperm": 173}),
    "aarch64": (0xC00000B7, {
        "ptrace": 117, "mount": 40, "umount2": 39, "pivot_root": 41, "swapon": 224, "swapoff": 225, "reboot": 142,
        "sethostname": 161, "setdomainname": 162, "init_module": 105, "finit_module": 273, "delete_module": 106,
        "kexec_load": 104, "kexec_file_load": 294, "bpf": 280, "keyctl": 219, "add_key": 217, "request_key": 218,
        "perf_event_open": 241, "userfaultfd": 282, "process_vm_readv": 270, "process_vm_writev": 271,
        "unshare": 97, "setns": 268, "open_by_handle_at": 265, "name_to_handle_at": 264, "acct": 89, "quotactl": 60,
        "kcmp": 272, "fanotify_init": 262, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
        "fsmount": 432, "mount_setattr": 442, "pidfd_getfd": 438}),
}


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def denied_numbers(machine: str | None = None) -> list[int]:
    """The syscall numbers the filter denies on `machine` (default: this one)."""
    table = _ARCHES[machine or platform.machine()][1]
    return sorted({table[name] for name in _DENIED if name in table})


def build_filter(machine: str | None = None) -> bytes | None:
    """The BPF program (bytes of `struct sock_filter`) for `machine`, or None where no table is known."""
    machine = machine or platform.machine()
    if machine not in _ARCHES:
        return None
    audit_arch = _ARCHES[machine][0]
    numbers = denied_numbers(machine)
    checks = [(_JGE_K, _X32_BIT)] if machine == "x86_64" else []
    checks += [(_JEQ_K, nr) for nr in numbers]
    program = [_insn(_LD_W_ABS, _OFFSET_ARCH), _insn(_JEQ_K, audit_arch, jt=1, jf=0), _insn(_RET_K, _RET_EPERM),
               _insn(_LD_W_ABS, _OFFSET_NR)]
    for i, (code, k) in enumerate(checks):  # jump over the remaining checks and the ALLOW to the EPERM return
        program.append(_insn(code, k, jt=len(checks) - i, jf=0))
    program += [_insn(_RET_K, _RET_ALLOW), _insn(_RET_K, _RET_EPERM)]
    return b"".join(program)
