"""Ending a process that is done without the interpreter's teardown (which frees every object and runs C++
static destructors: 1.1-1.6 CPU s after torch + megatron, ~0.1-0.2 s after pandas + pyarrow).

Used by the ranks (orchestrator.launch) and by the `orchestrator` command itself; docs/workload.md ("How a rank
ends") says why nothing is lost.
"""

from __future__ import annotations

import atexit
import io
import os
import sys
import threading
from pathlib import Path


class _PromptExit:
    code: int | None = None
    once_exists: Path | None = None
    registered = False


def exit_promptly(code: int, once_exists: Path | None = None) -> None:
    """End this rank's process as soon as Python's exit handlers have run, skipping the interpreter's teardown.

    Call it when the rank is done: the workload returned (TensorBoard writer closed, checkpoints finalized,
    process groups destroyed), the statuses are written and the log tee has ended. Tearing down an interpreter
    that imported torch and megatron (freeing ~400k objects, running C++ static destructors) costs 1.1-1.6 CPU
    seconds per rank; 4-8 ranks doing it at once on a small machine take 5-12 s, while the scheduler (the local
    executor, srun) waits for every rank's process to end. Nothing durable is lost by skipping it: the handler
    below runs at normal exit, after the main program ended (for submitit: after it saved the result pickle)
    and after non-daemon threads were joined. It first runs every other atexit handler in the usual order
    (logging, multiprocessing's child joins and finalizers, weakref finalizers, torch's), then flushes every
    Python file object still open for writing (what their destructors would do), then `os._exit(code)`.
    `once_exists`: exit 0 only if that file exists (submitit's result pickle), else the interpreter ends the
    usual way; an uncaught exception that ended the program after this call turns code 0 into 1.
    ORCH_FAST_EXIT=0 disables it; docs/workload.md ("How a rank ends") says why it is safe.
    """
    if os.environ.get("ORCH_FAST_EXIT", "1").strip() == "0":
        return
    _PromptExit.code, _PromptExit.once_exists = code, once_exists
    if _PromptExit.registered:
        return
    _PromptExit.registered = True
    # Register when the interpreter starts to shut down (threading's exit hooks run first, before the joins of
    # non-daemon threads and the atexit handlers): nothing registers an atexit handler after that, so ours is
    # the last registered, runs first, and runs every other one exactly once.
    register_at_shutdown = getattr(threading, "_register_atexit", None)
    if register_at_shutdown is None:
        atexit.register(_exit_now)
    else:
        register_at_shutdown(atexit.register, _exit_now)


def _exit_now() -> None:
    code = _PromptExit.code
    if code is None:
        return
    if getattr(sys, "last_exc", None) is not None or getattr(sys, "last_value", None) is not None:
        code = code or 1  # an uncaught exception ended the program after the rank was done
    elif code == 0 and _PromptExit.once_exists is not None and not _PromptExit.once_exists.exists():
        return
    atexit.unregister(_exit_now)
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    try:
        if run_exit_handlers is not None:
            run_exit_handlers()  # every other handler, last registered first, as the interpreter would
        else:
            import logging

            logging.shutdown()
        _flush_open_files()
    finally:
        os._exit(code)


_BUFFERED_WRITERS = (io.TextIOWrapper, io.BufferedWriter, io.BufferedRandom)


def _flush_open_files() -> None:
    """Flush stdout/stderr and every other open buffered Python file object (a normal exit does it when it
    destroys them). Finding them walks every object (0.1-0.15 s in a torch + megatron rank), so only when some
    regular file other than fds 0-2 is open for writing: no such fd, no such file object with data to lose."""
    flush_std()
    if not _writable_files_open():
        return
    import gc

    for stream in [obj for obj in gc.get_objects() if type(obj) in _BUFFERED_WRITERS]:
        try:
            if not stream.closed and stream.writable():
                stream.flush()
        except (OSError, ValueError):
            pass


def _writable_files_open() -> bool:
    """Whether a regular file other than stdin/stdout/stderr is open for writing (True where /proc is missing)."""
    import fcntl
    import stat

    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return True
    for name in names:
        fd = int(name)
        if fd <= 2:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY:
                return True
        except OSError:  # closed meanwhile (the listing's own fd)
            continue
    return False


def flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
