"""Run untrusted Python (a model's solution plus its tests) in a separate, limited process.

What bounds the code, in the order the runner sets it up:

1. **Separate process**: ``python -I`` (isolated: no user site, no ``PYTHON*`` variables, the
   working directory not on ``sys.path``), in its own session and process group, with a scrubbed
   environment, stdin/stdout/stderr not connected to us, and a fresh temporary working directory
   that is deleted afterwards together with everything in it.
2. **Network**: a new, empty network namespace (``unshare(CLONE_NEWNET)``; as a non-root user,
   inside a new user namespace) where the kernel allows it: then no socket can reach anything. On
   kernels that forbid it only the audit hook (4) blocks sockets. ``SandboxResult.network`` says
   which one held.
3. **Resource limits** (``setrlimit``): CPU seconds, address space (memory), size of any file
   written, open files, and no new processes or threads (``RLIMIT_NPROC=0``; the kernel does not
   enforce this one for root).
4. **Audit hook** (PEP 578), installed before the untrusted code runs and not removable from
   Python: it refuses process creation (fork, exec, spawn, system, subprocess), signals to other
   processes, sockets, native calls through ``ctypes`` (importing it works, so numpy imports),
   writes or deletions outside the working directory, and more than
   ``max_files`` files opened for writing. It is the barrier against fork bombs when running as
   root.
5. **Wall clock**: after ``timeout_s`` the whole process group gets SIGKILL; a watchdog thread
   started before the limits also ends the process a second later, or as soon as its parent
   (the reward worker that enforces the wall clock) is gone.

Not guaranteed: this is not a security boundary against code crafted to escape it (a hook in the
same interpreter can be defeated by deliberate introspection, and the process keeps the user's
file-system read access). It stops what RL policies actually do: loops, fork bombs, huge
allocations or files, network calls, ``exit(0)`` before the tests and printing fake results (the
verdict comes through a file opened before the solution runs, marked with a random nonce). For
hostile code, run the reward worker in a container or VM.
"""

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Status = Literal["passed", "failed", "timeout", "crashed"]


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run."""

    timeout_s: float = 5.0
    """Wall-clock seconds before the process group is killed; CPU time is capped at this too."""
    memory_mb: int = 1024
    """Address-space limit (RLIMIT_AS) in MiB."""
    max_file_mb: int = 8
    """Largest file the code may write (RLIMIT_FSIZE) in MiB."""
    max_files: int = 16
    """Files the code may open for writing (all inside its working directory)."""


@dataclass(frozen=True)
class SandboxResult:
    """What happened to one run."""

    status: Status
    """passed: every test passed. failed: some did not. timeout: ended by the wall-clock or the
    CPU-time limit. crashed: no verdict (killed by another limit, os._exit, a runner error)."""
    passed: int
    total: int
    network: str
    """How the network was cut: netns, userns+netns, or hook (sockets refused by the hook only)."""
    detail: str = ""
    """The first failing test's error, or why there is no verdict."""


def run_tests(solution: str, tests: list[str], limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Execute ``solution`` then each test in one sandboxed interpreter; count the tests that pass.

    A test passes when executing it (after the solution, in the solution's namespace) raises
    nothing. If the solution itself raises, every test fails.
    """
    outer = Path(tempfile.mkdtemp(prefix="rlft-sandbox-"))
    try:
        work = outer / "work"
        work.mkdir()
        nonce = secrets.token_hex(16)
        limits_dict = {**limits.__dict__, "work": str(work)}
        payload = {"nonce": nonce, "solution": solution, "tests": tests, "limits": limits_dict}
        (outer / "payload.json").write_text(json.dumps(payload))
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8", "TMPDIR": str(work)}
        env |= {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        with open(outer / "stderr", "wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-I", "-c", _RUNNER, str(outer)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=work,
                env=env,
                start_new_session=True,
            )
            try:
                process.wait(timeout=limits.timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(process.pid)
                process.wait()
        return _verdict(outer, nonce, len(tests), timed_out, process.returncode)
    finally:
        shutil.rmtree(outer, ignore_errors=True)


def _kill_group(pgid: int) -> None:
    """SIGKILL every process left in the run's process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _verdict(outer: Path, nonce: str, total: int, timed_out: bool, returncode: int) -> SandboxResult:
    """Read the runner's nonce-marked verdict line; anything else is a crash or a timeout."""
    result_path = outer / "result"
    lines = result_path.read_text(errors="replace").splitlines() if result_path.exists() else []
    verdict = next((json.loads(line[len(nonce) :]) for line in lines if line.startswith(nonce)), None)
    network = verdict["network"] if verdict else "unknown"
    # On a loaded machine the CPU-time limit (SIGXCPU) or the runner's own watchdog (exit 137) can
    # end the process before the parent sees the wall clock run out: the code ran out of time.
    timed_out = timed_out or returncode in (-signal.SIGXCPU, 137)
    if verdict is None or timed_out:
        stderr = (outer / "stderr").read_bytes()[-500:].decode(errors="replace").strip()
        why = "ran out of time" if timed_out else f"no verdict (exit code {returncode})"
        return SandboxResult("timeout" if timed_out else "crashed", 0, total, network, f"{why}. {stderr}")
    passed = verdict["passed"]
    status = "passed" if passed == total else "failed"
    return SandboxResult(status, passed, total, network, verdict["detail"])


# The runner is run with `python -I -c`; it is trusted code, so it sets every limit up before it
# executes the untrusted solution. It reads its payload from <outer>/payload.json (then deletes it,
# so the solution cannot read the nonce) and writes one verdict line to <outer>/result.
_RUNNER = r"""
import json, os, resource, shutil, sys, threading, time


def main():
    outer = sys.argv[1]
    with open(os.path.join(outer, "payload.json")) as f:
        payload = json.load(f)
    os.remove(os.path.join(outer, "payload.json"))
    limits, nonce = payload["limits"], payload["nonce"]
    work = os.path.realpath(limits["work"])
    result = open(os.path.join(outer, "result"), "w")
    sys.dont_write_bytecode = True

    def cut_network():
        if hasattr(os, "unshare"):
            unshare = os.unshare
        else:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)

            def unshare(flags):
                if libc.unshare(flags) != 0:
                    raise OSError(ctypes.get_errno(), "unshare")
        try:
            unshare(0x40000000)  # CLONE_NEWNET
            return "netns"
        except OSError:
            pass
        uid, gid = os.getuid(), os.getgid()
        try:
            unshare(0x10000000 | 0x40000000)  # CLONE_NEWUSER | CLONE_NEWNET
            maps = (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1"))
            for name, text in maps:
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
            return "userns+netns"
        except OSError:
            return "hook"

    network = cut_network()
    for name in ("ctypes", "ctypes._endian", "_ctypes"):
        sys.modules.pop(name, None)
    cut_network = None

    # Ends this process on its own if the parent that enforces the wall clock is killed first
    # (then nobody else deletes the temporary directory: the watchdog does).
    parent, deadline = os.getppid(), time.monotonic() + limits["timeout_s"] + 1.0

    def watchdog():
        while os.getppid() == parent and time.monotonic() < deadline:
            time.sleep(0.1)
        if os.getppid() != parent:
            shutil.rmtree(outer, ignore_errors=True)
        os._exit(137)

    guard = threading.Thread(target=watchdog, daemon=True)
    guard.start()

    cpu = max(1, int(limits["timeout_s"] + 0.999))
    for limit, value in (
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (limits["memory_mb"] << 20,) * 2),
        (resource.RLIMIT_FSIZE, (limits["max_file_mb"] << 20,) * 2),
        (resource.RLIMIT_NOFILE, (64, 64)),
        (resource.RLIMIT_NPROC, (0, 0)),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        resource.setrlimit(limit, value)

    BLOCKED = {
        "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
        "os.kill", "os.killpg", "signal.pthread_kill", "os.setuid", "os.chroot",
        "socket.__new__", "socket.bind", "socket.connect", "socket.getaddrinfo", "socket.gethostbyname",
        "socket.sendto", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function", "sys.remote_exec",
    }
    BLOCKED_IMPORTS = {"_posixsubprocess", "_socket"}
    PATH_EVENTS = {
        "os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.rename": 2, "os.chmod": 1, "os.chown": 1,
        "os.truncate": 1, "os.symlink": 2, "os.link": 2, "os.utime": 1, "shutil.rmtree": 1,
    }
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    realpath, fspath, sep = os.path.realpath, os.fspath, os.sep
    written = [0]

    def inside(path):
        if isinstance(path, int):
            return True
        full = realpath(fspath(path))
        return full == work or full.startswith(work + sep)

    def hook(event, args):
        if threading.get_ident() == guard.ident:
            return
        if event in BLOCKED or event.startswith("socket.") or event == "ctypes.dlopen" and args[0]:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0].partition(".")[0] in BLOCKED_IMPORTS:
            raise PermissionError(f"sandbox: import of {args[0]} is not allowed")
        if event == "open" and ((args[2] or 0) & WRITE_FLAGS or set(args[1] or "") & set("wax+")):
            if not inside(args[0]):
                raise PermissionError(f"sandbox: writing {args[0]!r} outside the working directory")
            written[0] += 1
            if written[0] > limits["max_files"]:
                raise PermissionError("sandbox: too many files opened for writing")
        if event in PATH_EVENTS:
            for path in args[: PATH_EVENTS[event]]:
                if path is not None and not inside(path):
                    raise PermissionError(f"sandbox: {event} on {path!r} outside the working directory")

    sys.addaudithook(hook)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    passed, detail = 0, ""
    try:
        exec(compile(payload["solution"], "solution.py", "exec"), namespace)
        solution_ok = True
    except BaseException as error:
        solution_ok, detail = False, f"solution raised {type(error).__name__}: {error}"[:300]
    if solution_ok:
        for i, test in enumerate(payload["tests"]):
            try:
                exec(compile(test, f"test_{i}.py", "exec"), namespace)
                passed += 1
            except BaseException as error:
                detail = detail or f"test {i} raised {type(error).__name__}: {error}"[:300]
    result.write(nonce + json.dumps({"passed": passed, "detail": detail, "network": network}) + "\n")
    result.flush()
    os._exit(0)


main()
"""
