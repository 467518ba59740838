"""Stopping cleanly when Slurm says so: stop signals, DataLoader workers that ignore them, the requeue marker.

At preemption, ``scancel`` or the time limit, slurmstepd signals **every process of the job step** (SIGTERM, or the
``--signal`` of the batch script, SIGUSR1), DataLoader workers included. The training process records the signal and
all ranks stop at the next step they agree on: a checkpoint, then exit code 75. The workers ignore these signals, so a
stop is never turned into a crash by a worker dying of it.

Whether the job is requeued must not depend on ``srun``'s exit status: with ``--kill-on-bad-exit`` the first rank to
exit 75 gets the others killed and srun reports by its own rules. So rank 0 writes a marker file in the work dir
(before any rank exits), and the batch script of ``mtp-slurm`` requeues the job when it finds the marker, deleting it:
one requeue per stop. SIGINT (Ctrl-C) also checkpoints, exits 130 and asks for no requeue; a second one stops at once.
"""
from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any, Iterator

from torch.utils.data import DataLoader

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
REQUEUE_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "try again"
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, the shell's code for Ctrl-C
REQUEUE_MARKER = "requeue_request"


class StopRequest:
    """The first stop signal the main process received; :meth:`installed` handles them for a block of code."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_code(self) -> int:
        return INTERRUPTED_EXIT_CODE if self.signum == signal.SIGINT else REQUEUE_EXIT_CODE

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: the user does not want to wait for the checkpoint
        if self.signum is None or signum != signal.SIGINT:
            self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: stop signals are the training process's business."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)  # a signal held since the fork is discarded here
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold stop signals while workers start: they inherit the block until ``ignore_stop_signals`` runs, and the
    training process gets what arrived meanwhile as soon as the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _kill_daemonic_children() -> None:
    """At exit multiprocessing terminates (SIGTERM) and joins its daemonic children, DataLoader workers included:
    workers that ignore SIGTERM (an iterator that was never released) would be waited for forever. Kill them first."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would report these deaths as worker failures
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


class StopSafeDataLoader(DataLoader):
    """A ``DataLoader`` whose worker processes survive the stop signals sent to the whole job step."""

    _exit_hook = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("worker_init_fn") is not None:
            raise ValueError("StopSafeDataLoader sets its own worker_init_fn")
        super().__init__(*args, worker_init_fn=ignore_stop_signals, **kwargs)

    def __iter__(self) -> Any:
        if self.num_workers and not StopSafeDataLoader._exit_hook:
            atexit.register(_kill_daemonic_children)  # runs before multiprocessing's own exit handler (LIFO)
            StopSafeDataLoader._exit_hook = True
        with stop_signals_held():
            return super().__iter__()


def write_requeue_marker(work_dir: Path, iteration: int, stop: StopRequest) -> Path | None:
    """Inside a Slurm job, after a preemption stop: ask the batch script for one requeue (it deletes the file)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job or stop.signum not in REQUEUE_SIGNALS:
        return None
    path = work_dir / REQUEUE_MARKER
    tmp = path.with_name(f".{REQUEUE_MARKER}.tmp")
    tmp.write_text(f"job {job} stopped by {stop.name} at iteration {iteration}\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
