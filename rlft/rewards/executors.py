"""Run reward-function calls concurrently, each bounded by a timeout.

A *job* is one call of one function: ``(function index, kwargs)``; its result is one value per
sample the call scores, and the seconds the call took. Three runners:

- :class:`ProcessExecutor` (``reward.executor=process``, the default, for sync functions): a pool
  of up to ``max_concurrency`` spawned worker processes, each loading every function once. A call
  past the timeout is ended by killing its worker's process group (SIGKILL), and a new worker is
  started when one is needed; a worker that dies (segfault, ``os._exit``, the OOM killer) fails
  only its call. Costs: a worker's start-up (imports of the reward modules, not counted in the
  timeout) and pickling each call's arguments.
  What a function prints (its stdout and stderr, at the file-descriptor level, so subprocesses
  and C code too) goes to a file of its worker, not to the console: :attr:`ProcessExecutor.output`
  keeps the byte count and the last :data:`OUTPUT_TAIL_BYTES` of each function's latest call.
- :class:`ThreadExecutor` (``reward.executor=thread``): daemon threads of this process. No start-up
  or pickling cost and shared memory, but Python cannot kill a thread: a call past the timeout is
  *abandoned* (its samples get the failure reward) and keeps running, holding CPU and memory, until
  it returns by itself. Use it for functions known to finish, or to debug with pdb.
- :class:`AsyncJobs` (``async def`` functions, whatever the executor): awaited concurrently on an
  event loop in a helper thread, at most ``max_concurrency`` at a time, each under
  ``asyncio.wait_for``. Cancellation only happens at an ``await``: a coroutine that blocks the loop
  stalls the others, and once the batch's time budget is spent the remaining calls count as
  timeouts and the loop is abandoned.
"""

import asyncio
import contextlib
import fcntl
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import signal
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any

from rlft.rewards.loader import Failure, RewardFunction, load_reward_function

logger = logging.getLogger("rlft.rewards")

Job = tuple[int, dict[str, Any]]
"""One call: the index of the function in the manager's list, and its keyword arguments."""
Values = list[float | Failure | None]
Result = tuple[Values, float]
"""One value per sample the call scores, and the call's duration in seconds."""

WORKER_START_TIMEOUT_S = 300.0
"""How long a new worker process may take to import its reward functions and report ready."""

OUTPUT_TAIL_BYTES = 2048
"""How much of the end of a call's captured stdout/stderr is kept (process executor)."""


@dataclass
class Output:
    """What a function's latest call in a worker process printed."""

    num_bytes: int = 0
    tail: str = ""
    """The last :data:`OUTPUT_TAIL_BYTES` of it, decoded."""


def _timed_out(fn: RewardFunction, kwargs: dict[str, Any], timeout_s: float) -> Result:
    failure = Failure("timeout", f"took longer than reward.timeout_s={timeout_s:g} s")
    return [failure] * fn.samples_in(kwargs), timeout_s


def _timed_run(fn: RewardFunction, kwargs: dict[str, Any]) -> Result:
    start = time.perf_counter()
    values = fn.run(kwargs)
    return values, time.perf_counter() - start


class ThreadExecutor:
    """Sync calls on daemon threads; a call past ``timeout_s`` is abandoned, not stopped."""

    def __init__(self, functions: list[RewardFunction], max_concurrency: int, timeout_s: float) -> None:
        self.functions, self.max_concurrency, self.timeout_s = functions, max_concurrency, timeout_s
        self.abandoned = 0
        """Calls that timed out; their threads may still be running."""
        self.output: dict[int, Output] = {}
        """Always empty: threads print to the trainer's own stdout and stderr."""

    def run(self, jobs: list[Job]) -> list[Result]:
        """Run ``jobs``, at most ``max_concurrency`` at a time; results in the order of ``jobs``."""
        results: list[Result | None] = [None] * len(jobs)
        done: queue.SimpleQueue[tuple[int, Result]] = queue.SimpleQueue()
        pending = deque(range(len(jobs)))
        deadlines: dict[int, float] = {}
        while pending or deadlines:
            while pending and len(deadlines) < self.max_concurrency:
                j = pending.popleft()
                fn, kwargs = self.functions[jobs[j][0]], jobs[j][1]
                thread = threading.Thread(
                    target=lambda j=j, fn=fn, kwargs=kwargs: done.put((j, _timed_run(fn, kwargs))),
                    name=f"reward-{fn.name}",
                    daemon=True,
                )
                deadlines[j] = time.monotonic() + self.timeout_s
                thread.start()
            try:
                j, result = done.get(timeout=max(0.0, min(deadlines.values()) - time.monotonic()))
                if deadlines.pop(j, None) is not None:  # else it already timed out
                    results[j] = result
            except queue.Empty:
                now = time.monotonic()
                for j in [j for j, deadline in deadlines.items() if deadline <= now]:
                    del deadlines[j]
                    results[j] = _timed_out(self.functions[jobs[j][0]], jobs[j][1], self.timeout_s)
                    self.abandoned += 1
                    if self.abandoned == 1:
                        logger.warning(
                            "reward function %r timed out on a thread (reward.executor=thread); the "
                            "thread cannot be stopped and keeps running. Use reward.executor=process "
                            "to have timed-out calls killed.",
                            self.functions[jobs[j][0]].name,
                        )
        return results

    def close(self) -> None:
        """Nothing to release: abandoned threads are daemons."""


class _Worker:
    """One spawned worker process and the parent's end of its pipe."""

    def __init__(self, ctx: Any, sources: list[tuple[str, dict[str, Any]]]) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_serve, args=(child, sources, os.getpid()), name="rlft-reward-worker", daemon=True
        )
        self.process.start()
        child.close()

    def kill(self) -> None:
        """SIGKILL the worker and whatever it started in its process group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.join()
        self.conn.close()


class ProcessExecutor:
    """Sync calls in a pool of spawned worker processes; a call past ``timeout_s`` is killed."""

    def __init__(self, functions: list[RewardFunction], max_concurrency: int, timeout_s: float) -> None:
        self.functions, self.max_concurrency, self.timeout_s = functions, max_concurrency, timeout_s
        self._sources = [(fn.source, fn.params) for fn in functions]
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: list[_Worker] = []
        self.killed = 0
        """Worker processes killed because a call timed out."""
        self.output: dict[int, Output] = {}
        """Per function index: what its latest call that printed anything printed."""
        self._finalizer = weakref.finalize(self, _kill_all, self._idle)

    def run(self, jobs: list[Job]) -> list[Result]:
        """Run ``jobs``, at most ``max_concurrency`` at a time; results in the order of ``jobs``."""
        results: list[Result | None] = [None] * len(jobs)
        pending = deque(range(len(jobs)))
        busy: dict[_Worker, tuple[int, float]] = {}
        try:
            self._run(jobs, results, pending, busy)
        except BaseException:  # e.g. Ctrl-C: calls still running are killed, not left behind
            for worker in busy:
                worker.kill()
            raise
        return results

    def _run(self, jobs: list[Job], results: list[Result | None], pending: deque[int], busy: dict) -> None:
        """Hand out ``pending`` jobs to idle (or new) workers and collect them into ``results``."""
        while pending or busy:
            self._start_workers(min(len(pending), self.max_concurrency - len(busy)) - len(self._idle))
            if pending and not self._idle and not busy:
                for j in pending:  # no worker could be started
                    fn, kwargs = self.functions[jobs[j][0]], jobs[j][1]
                    failure = Failure("crashed", "no reward worker process could be started (see the log)")
                    results[j] = [failure] * fn.samples_in(kwargs), 0.0
                break
            while pending and self._idle:
                j = pending.popleft()
                self._send(self._idle.pop(), j, jobs, busy, results)
            if busy:
                self._collect(busy, jobs, results)

    def _send(
        self, worker: _Worker, j: int, jobs: list[Job], busy: dict, results: list[Result | None]
    ) -> None:
        """Hand job ``j`` to ``worker``; arguments that cannot be pickled fail that job only."""
        fn, kwargs = self.functions[jobs[j][0]], jobs[j][1]
        try:
            data = pickle.dumps(jobs[j])
        except Exception as error:
            why = f"{type(error).__name__}: {error}"
            failure = Failure("raised", f"could not send its arguments to a worker process: {why}")
            results[j] = [failure] * fn.samples_in(kwargs), 0.0
            self._idle.append(worker)
            return
        try:
            worker.conn.send_bytes(data)
        except OSError:
            worker.kill()
            results[j] = self._crashed(worker, fn, kwargs)
            return
        busy[worker] = (j, time.monotonic() + self.timeout_s)

    def _collect(self, busy: dict[_Worker, tuple[int, float]], jobs: list[Job], results: list) -> None:
        """Wait until a busy worker answers or the nearest deadline; kill workers past theirs."""
        nearest = min(deadline for _, deadline in busy.values())
        by_conn = {worker.conn: worker for worker in busy}
        for conn in multiprocessing.connection.wait(list(by_conn), max(0.0, nearest - time.monotonic())):
            worker = by_conn[conn]
            j, _ = busy.pop(worker)
            try:
                values, seconds, output = conn.recv()
                results[j] = values, seconds
                if output.num_bytes:
                    self.output[jobs[j][0]] = output
                self._idle.append(worker)
            except (EOFError, OSError):
                worker.kill()
                results[j] = self._crashed(worker, self.functions[jobs[j][0]], jobs[j][1])
        now = time.monotonic()
        for worker, (j, deadline) in list(busy.items()):
            if deadline <= now:
                del busy[worker]
                worker.kill()
                self.killed += 1
                results[j] = _timed_out(self.functions[jobs[j][0]], jobs[j][1], self.timeout_s)

    @staticmethod
    def _crashed(worker: _Worker, fn: RewardFunction, kwargs: dict[str, Any]) -> Result:
        code = worker.process.exitcode
        why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        failure = Failure("crashed", f"its worker process died during the call ({why})")
        return [failure] * fn.samples_in(kwargs), 0.0

    def _start_workers(self, count: int) -> None:
        """Start ``count`` workers at once and wait until each has loaded the functions."""
        if count <= 0:
            return
        started = []
        for _ in range(count):
            try:
                started.append(_Worker(self._ctx, self._sources))
            except OSError as error:
                logger.error("could not start a reward worker process: %s", error)
                break
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        for worker in started:
            try:
                ready = worker.conn.poll(max(0.0, deadline - time.monotonic())) and worker.conn.recv()
            except (EOFError, OSError):
                ready = False
            if ready == "ready":
                self._idle.append(worker)
            else:
                worker.kill()
                logger.error(
                    "a reward worker process did not start (exit code %s); its stderr is above",
                    worker.process.exitcode,
                )

    def close(self) -> None:
        """Kill the idle workers (busy ones only exist inside :meth:`run`)."""
        self._finalizer()


def _kill_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.kill()
    workers.clear()


def _serve(conn: Any, sources: list[tuple[str, dict[str, Any]]], parent_pid: int) -> None:
    """A worker process: load the functions, then run one call per message until the pipe closes."""
    os.setpgrp()  # its own process group, so a timeout kill also ends what the call started
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    functions: list[RewardFunction | Failure] = []
    for source, params in sources:
        try:
            functions.append(load_reward_function(source).with_params(params))
        except Exception as error:
            functions.append(Failure.raised(error))
    conn.send("ready")
    captured = _capture_output()  # after loading: what fails to start still shows on stderr
    while True:
        try:
            index, kwargs = conn.recv()
        except EOFError:
            return
        fn = functions[index]
        if isinstance(fn, Failure):
            n = len(kwargs["prompts"]) if "prompts" in kwargs else 1
            result = [Failure("raised", f"could not be loaded in the worker: {fn.message}")] * n, 0.0
        else:
            result = _timed_run(fn, kwargs)
        conn.send((*result, _take_output(captured)))


def _capture_output() -> int:
    """Point this process's stdout and stderr (file descriptors 1 and 2) at an unnamed file in
    append mode; returns its descriptor."""
    fd, path = tempfile.mkstemp(prefix="rlft-reward-output-")
    os.unlink(path)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    return fd


def _take_output(fd: int) -> Output:
    """What was printed since the last call (its size and tail); the file is emptied."""
    sys.stdout.flush()
    sys.stderr.flush()
    size = os.fstat(fd).st_size
    tail = os.pread(fd, OUTPUT_TAIL_BYTES, max(0, size - OUTPUT_TAIL_BYTES))
    os.ftruncate(fd, 0)  # appends start again at 0
    return Output(size, tail.decode(errors="replace"))


def _exit_with_parent(parent_pid: int) -> None:
    """End this worker once the trainer's process is gone (a kill -9 leaves no one to reap it)."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


class AsyncJobs:
    """Calls of ``async def`` functions, awaited concurrently on an event loop in a helper thread."""

    def __init__(
        self, functions: list[RewardFunction], jobs: list[Job], max_concurrency: int, timeout_s: float
    ) -> None:
        """Start awaiting ``jobs`` now; :meth:`join` collects the results."""
        self.functions, self.jobs = functions, jobs
        self.max_concurrency, self.timeout_s = max_concurrency, timeout_s
        self.results = [_timed_out(functions[i], kwargs, timeout_s) for i, kwargs in jobs]
        self.budget_s = timeout_s * math.ceil(len(jobs) / max_concurrency) + 1.0
        self._start = time.monotonic()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._all(),), name="reward-async", daemon=True
        )
        self._thread.start()

    async def _all(self) -> None:
        semaphore = asyncio.Semaphore(self.max_concurrency)

        async def one(j: int) -> None:
            fn, kwargs = self.functions[self.jobs[j][0]], self.jobs[j][1]
            async with semaphore:
                start = time.perf_counter()
                with contextlib.suppress(asyncio.TimeoutError):
                    values = await asyncio.wait_for(fn.arun(kwargs), self.timeout_s)
                    self.results[j] = values, time.perf_counter() - start

        await asyncio.gather(*(one(j) for j in range(len(self.jobs))))

    def join(self) -> list[Result]:
        """The results; calls still unfinished once the time budget is spent count as timeouts."""
        self._thread.join(max(0.0, self._start + self.budget_s - time.monotonic()))
        if self._thread.is_alive():
            logger.error(
                "async reward functions did not finish within %.0f s although each call has "
                "reward.timeout_s=%g s: one of them blocks the event loop (sync code inside "
                "async def). Their unfinished calls count as timeouts; make them await instead.",
                self.budget_s,
                self.timeout_s,
            )
        return list(self.results)
