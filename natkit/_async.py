"""Running natkit's coroutines with bounded cleanup.

``asyncio.run`` waits without limit for every leftover task to finish when it
closes the loop; an aiortc background task that does not end on
cancellation then hangs the process after Ctrl-C (seen in natkit check with a
large payload). :func:`run` behaves like ``asyncio.run`` (first SIGINT cancels
the main task, a second one raises at once) but gives leftover tasks at most
``cleanup_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], *, cleanup_timeout: float = 2.0) -> T:
    """Run ``coro`` to completion in a new event loop and return its result.

    Raises what ``coro`` raises; :class:`KeyboardInterrupt` when interrupted
    by SIGINT (after the main task has been cancelled and cleaned up).
    """
    loop = asyncio.new_event_loop()
    main = loop.create_task(coro)
    interrupted = False
    old_handler = None
    in_main_thread = threading.current_thread() is threading.main_thread()

    def on_sigint(signum, frame) -> None:
        nonlocal interrupted
        if interrupted or main.done():
            raise KeyboardInterrupt
        interrupted = True
        main.cancel()
        loop.call_soon_threadsafe(lambda: None)  # wake the selector

    if in_main_thread and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        old_handler = signal.signal(signal.SIGINT, on_sigint)
    try:
        try:
            return loop.run_until_complete(main)
        except asyncio.CancelledError:
            if interrupted:
                raise KeyboardInterrupt from None
            raise
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
        _close(loop, cleanup_timeout)


def _close(loop: asyncio.AbstractEventLoop, timeout: float) -> None:
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=timeout))
        loop.run_until_complete(asyncio.wait([loop.create_task(loop.shutdown_asyncgens())], timeout=timeout))
    finally:
        # tasks that ignored cancellation are abandoned quietly
        loop.set_exception_handler(lambda _loop, _context: None)
        loop.close()
