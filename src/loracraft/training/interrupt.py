"""Ctrl-C and SIGTERM during training: the first asks the loop to stop after the current optimizer step
(then the run saves a state and a LoRA file); a second Ctrl-C stops at once. Every file is written
atomically, so stopping at once loses only the step in progress, never a file."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Windows has no SIGTERM to send another process: the job queue stops a run there with CTRL_BREAK_EVENT,
# which arrives as SIGBREAK.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, *([signal.SIGBREAK] if hasattr(signal, "SIGBREAK") else []))


class StopRequest:
    """Set by the first Ctrl-C or SIGTERM; the loop reads `requested` after each optimizer step."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Catch Ctrl-C and SIGTERM while the block runs (the previous handlers come back after it).
    Signals can only be caught in the main thread: elsewhere (a UI worker thread) this catches nothing."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if request.requested:
            # The second one: stop now. Everything on disk was written whole or not at all.
            raise KeyboardInterrupt
        request.signal_name = name
        # os.write, not print: the signal may land while the main thread is inside a print.
        message = (
            f"\n{name}: stopping after this step to save a state and a LoRA file "
            "(press Ctrl-C again to stop at once, without saving)\n"
        )
        os.write(2, message.encode())

    previous = {sig: signal.signal(sig, handle) for sig in _STOP_SIGNALS}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class RunStopped(Exception):
    """The run stopped on a signal after saving; the message says what was saved and how to resume.
    The exit status follows the shell's convention: 128 + the signal's number."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.exit_code = 128 + signal.Signals[signal_name].value
