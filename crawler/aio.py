"""Small asyncio helpers: shielded commits and a bounded thread limiter."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")


async def shielded(coroutine: Coroutine[Any, Any, T], grace_s: float) -> T:
    """Run `coroutine` to completion even if the caller is cancelled (for at most grace_s).

    Used for "place the file, then commit the row": being cancelled in the middle would
    leave work a restart must redo. On cancellation we wait for the inner task, bounded,
    and then re-raise the cancellation.
    """
    task = asyncio.ensure_future(coroutine)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, grace_s)
        raise


class ThreadLimiter:
    """Runs blocking callables in a dedicated, bounded thread pool."""

    def __init__(self, workers: int, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: function(*args, **kwargs))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class DaemonThreadRunner:
    """Runs blocking calls one at a time on daemon threads.

    For inference: a call that hangs (a wedged device) is abandoned after its timeout and
    cannot keep the process alive at exit, as a ThreadPoolExecutor worker would.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def deliver(setter: Callable[[Any], None], value: Any) -> None:
            if not future.done():
                setter(value)

        def hand_over(setter: Callable[[Any], None], value: Any) -> None:
            # The loop is gone when the call outlived its caller (a hung call, abandoned).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, setter, value)

        def target() -> None:
            with self._lock:
                try:
                    result = function(*args, **kwargs)
                except BaseException as error:  # noqa: BLE001 - handed to the awaiting task
                    hand_over(future.set_exception, error)
                else:
                    hand_over(future.set_result, result)

        threading.Thread(target=target, name=self.name, daemon=True).start()
        return await future


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait for `event` at most `timeout_s`; True when it was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)
    return event.is_set()

