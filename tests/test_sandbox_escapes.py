"""Every escape from the code sandbox reported in issue 15, tried for real; each must be blocked.

Each escape runs twice: in the full sandbox (``sandbox``: bubblewrap + in-process hooks + rlimits)
and with the in-process hooks left out (``os-only``), which is what code that defeats the hooks
faces. Where it can, the outcome is checked from outside (signals received, files on the host,
xattrs, secrets) rather than trusting what the sandboxed code reports. The table of escape ->
outcome is printed at the end of the module (pytest -rA shows it with the ids).
"""

import functools
import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from rlft.rewards.sandbox import Sandbox, SandboxLimits, isolation, run_tests

pytestmark = pytest.mark.skipif(
    isolation() != "bwrap", reason="bubblewrap does not run here (apt-get install bubblewrap); CI has it"
)
LIMITS = SandboxLimits(timeout_s=20, memory_mb=512)
LAYERS = ["sandbox", "os-only"]
OUTCOMES: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def outcome_table(request):
    yield
    width = max(map(len, OUTCOMES), default=0)
    writer = request.config.pluginmanager.getplugin("terminalreporter")
    writer.write_line("\nsandbox escape -> outcome")
    for name, outcome in OUTCOMES.items():
        writer.write_line(f"  {name:<{width}}  {outcome}")


def probe(code: str, layer: str, **constants: object) -> Any:
    """Run ``code`` (which defines ``probe()``) in the sandbox; what ``probe()`` returned."""
    header = "".join(f"{name} = {value!r}\n" for name, value in constants.items())
    with Sandbox(header + TRY + textwrap.dedent(code), LIMITS, in_process_hooks=layer == "sandbox") as box:
        assert not box.solution_error, box.solution_error
        return box.names["probe"]()


def record(name: str, layer: str, outcome: Any) -> Any:
    """Note ``outcome`` for the table; returns it."""
    OUTCOMES[f"{name} [{layer}]"] = str(outcome)[:150]
    return outcome


TRY = """
def attempt(action, *args):
    try:
        result = action(*args)
        return f"DONE {result!r}"
    except BaseException as error:
        return f"blocked: {type(error).__name__}: {error}"
"""


@pytest.mark.parametrize("layer", LAYERS)
def test_pidfd_send_signal_to_the_parent(layer):
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: received.append(1))
    try:
        code = """
        import os, signal
        def send(pid):
            signal.pidfd_send_signal(os.pidfd_open(pid), signal.SIGUSR1)
        def probe():
            return [attempt(send, pid) for pid in (os.getppid(), JUDGE)]
        """
        outcome = probe(code, layer, JUDGE=os.getpid())
    finally:
        signal.signal(signal.SIGUSR1, previous)
    record("pidfd_send_signal(parent / judge pid)", layer, outcome)
    assert received == []
    assert all(o.startswith("blocked") for o in outcome)


@pytest.mark.parametrize("layer", LAYERS)
def test_os_kill_of_the_judge(layer):
    code = """
    import os
    def probe():
        return attempt(os.kill, JUDGE, 0)
    """
    outcome = record("os.kill(judge pid, 0)", layer, probe(code, layer, JUDGE=os.getpid()))
    assert outcome.startswith("blocked")


JUDGE = """
import json, sys
from rlft.rewards.sandbox import Sandbox, SandboxLimits
with Sandbox(sys.argv[1], SandboxLimits(timeout_s=20), in_process_hooks=sys.argv[2] == "sandbox") as box:
    print(json.dumps(box.names["probe"]()))
"""


@pytest.mark.parametrize("layer", LAYERS)
def test_proc_environ_of_the_parent_does_not_leak_secrets(layer):
    """The judge runs in a process started with a secret in its environment, as a trainer with
    WANDB_API_KEY would; the sandbox reads every /proc/<pid>/environ it can name."""
    secret = secrets.token_hex(16)
    code = """
    import os
    def read(pid):
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().decode(errors="replace")
    def probe():
        pids = {os.getppid(), os.getpid() - 1, 1} | {int(p) for p in os.listdir("/proc") if p.isdigit()}
        return {str(pid): attempt(read, pid) for pid in sorted(pids)} | {"judge": attempt(read, int(JUDGE))}
    """
    source = f"JUDGE = {os.getpid()!r}\n" + TRY + textwrap.dedent(code)
    judge = subprocess.run(
        [sys.executable, "-c", JUDGE, source, layer],
        env={**os.environ, "WANDB_API_KEY": secret, "HF_TOKEN": secret},
        capture_output=True,
        text=True,
        check=True,
    )
    outcome = json.loads(judge.stdout)
    record("read /proc/<ppid|pid>/environ", layer, outcome)
    assert secret not in judge.stdout
    assert outcome["judge"].startswith("blocked")


def _host_targets(tmp_path: Path) -> list[str]:
    """Places outside the sandbox's directory that the sandbox user could write if it saw them."""
    tmp_path.chmod(0o777)
    return [str(tmp_path / "escape"), f"/tmp/rlft-escape-{secrets.token_hex(4)}"]


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("call", ["mkfifo", "mknod-fifo", "mknod-file"])
def test_special_files_outside_the_directory(tmp_path, layer, call):
    host = _host_targets(tmp_path)
    code = """
    import os, stat
    MODES = {"mkfifo": None, "mknod-fifo": stat.S_IFIFO | 0o666, "mknod-file": stat.S_IFREG | 0o666}
    def make(path):
        return os.mkfifo(path) if CALL == "mkfifo" else os.mknod(path, MODES[CALL])
    def probe():
        inside_view = ["/escape", "/usr/escape", os.path.join(os.path.dirname(os.getcwd()), "escape")]
        return [attempt(make, path) for path in [*HOST, *inside_view]]
    """
    outcome = record(
        f"os.{call.split('-')[0]} outside ({call})", layer, probe(code, layer, HOST=host, CALL=call)
    )
    assert all(o.startswith("blocked") for o in outcome)
    assert not any(os.path.lexists(path) for path in host)


@pytest.mark.parametrize("layer", LAYERS)
def test_setxattr_outside_the_directory(tmp_path, layer):
    victim = _host_targets(tmp_path)[0]
    Path(victim).write_text("x")
    Path(victim).chmod(0o666)
    code = """
    import os, sys
    def probe():
        paths = (VICTIM, sys.executable, "/")
        return [attempt(os.setxattr, path, "user.rlft_escape", b"1") for path in paths]
    """
    outcome = record("os.setxattr outside", layer, probe(code, layer, VICTIM=victim))
    assert all(o.startswith("blocked") for o in outcome)
    for path in (victim, sys.executable):
        assert "user.rlft_escape" not in os.listxattr(path)


@pytest.mark.parametrize("layer", LAYERS)
def test_character_device_inside_the_directory(layer):
    """The device numbers are /dev/null's (1, 3): harmless if it were allowed; /dev/sda's would not be."""
    code = """
    import os, stat
    def write():
        os.mknod("dev", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        with open("dev", "wb") as f:
            return f.write(b"x")
    def probe():
        return attempt(write)
    """
    outcome = record("char device made inside, then written", layer, probe(code, layer))
    assert outcome.startswith("blocked")


@pytest.mark.parametrize("layer", LAYERS)
def test_host_file_outside_is_not_readable(tmp_path, layer):
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(secret := secrets.token_hex(8))
    secret_file.chmod(0o644)
    tmp_path.chmod(0o755)
    code = """
    def read(path):
        return open(path).read()
    def probe():
        return attempt(read, PATH)
    """
    outcome = record("read a host file outside", layer, probe(code, layer, PATH=str(secret_file)))
    assert outcome.startswith("blocked") and secret not in outcome


@pytest.mark.parametrize("layer", LAYERS)
def test_processes_and_threads_are_refused_as_root_too(layer):
    """RLIMIT_NPROC binds only a non-root uid: the sandbox must not run as uid 0 (outside)."""
    code = """
    import os, threading, time
    def fork():
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        return pid
    def thread():
        threading.Thread(target=time.sleep, args=(0.1,)).start()
    def probe():
        return {"uid": os.getuid(), "fork": attempt(fork), "thread": attempt(thread)}
    """
    outcome = probe(code, layer)
    record("fork / thread (RLIMIT_NPROC)", layer, outcome)
    assert outcome["fork"].startswith("blocked") and outcome["thread"].startswith("blocked")
    if os.geteuid() == 0:
        assert outcome["uid"] != 0


FORGER = """
import json, os, sys
# Everything the old verdict lived in: the caller's frames (nonces, results, ids) and every fd.
found = []
frame = sys._getframe(0)
while frame is not None:
    for scope in (frame.f_locals, frame.f_globals):
        for value in list(scope.values()):
            if isinstance(value, dict) and "id" in value:
                found.append(value["id"])
            if isinstance(value, str) and len(value) in (16, 32):
                found.append(value)
    frame = frame.f_back
lines = []
for token in found:
    lines.append(token + json.dumps({"passed": 2, "detail": "", "network": "netns"}))
    lines.append(json.dumps({"id": token, "names": {"add": {"lit": "0"}}}))
    lines.append(json.dumps({"id": token, "value": {"lit": "True"}}))
    lines.append(json.dumps({"id": token, "value": {"lit": "3"}}))
print("all tests passed")
for fd in range(0, 64):
    try:
        os.write(fd, ("\\n".join(lines) + "\\n").encode())
    except OSError:
        pass
"""


@pytest.mark.parametrize("layer", LAYERS)
def test_a_solution_that_defines_nothing_cannot_forge_its_verdict(layer, monkeypatch):
    from rlft.rewards import sandbox

    monkeypatch.setattr(sandbox, "Sandbox", functools.partial(Sandbox, in_process_hooks=layer == "sandbox"))
    result = run_tests(FORGER, ["assert add(1, 2) == 3", "assert add(2, 2) == 4"], LIMITS)
    record(
        "forge the verdict (frames, fds)", layer, f"{result.status}, {result.passed} passed: {result.detail}"
    )
    assert (result.passed, result.status) == (0, "failed")


def test_the_hooks_alone_warn(monkeypatch, caplog):
    from rlft.rewards import sandbox

    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    sandbox.isolation.cache_clear()
    try:
        assert sandbox.isolation() == "hook"
        assert "in-process hooks only" in caplog.text and "apt-get install bubblewrap" in caplog.text
        result = run_tests("def f():\n    return 1", ["assert f() == 1"], LIMITS)
        assert (result.status, result.isolation) == ("passed", "hook")
    finally:
        sandbox.isolation.cache_clear()
