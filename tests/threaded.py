"""A front end on its own uvloop thread, as in production, so tests can drive it with blocking clients too."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import uvloop

from gateway.config import Config
from gateway.services import Services, build_services

T = TypeVar("T")


class Listener(Protocol):
    """What a front end offers (PostgresListener, SshListener)."""

    @property
    def port(self) -> int: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


L = TypeVar("L", bound=Listener)


class OnLoop:
    """Mixin for test handles: run coroutines on the gateway's loop (its store, registry and timers live there)."""

    loop: asyncio.AbstractEventLoop
    listener: Listener

    @property
    def port(self) -> int:
        return self.listener.port

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await a coroutine that runs on the gateway's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """The same, from a plain thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)


@contextmanager
def serve_in_thread(
    config: Config, make_listener: Callable[[Services], L], name: str
) -> Iterator[tuple[Services, L, asyncio.AbstractEventLoop]]:
    """Start services and one listener on a new uvloop thread; stop both and the thread afterwards."""
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=name, daemon=True)
    thread.start()

    async def start() -> tuple[Services, L]:
        services = await build_services(config)
        listener = make_listener(services)
        await listener.start()
        return services, listener

    services, listener = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield services, listener, loop
    finally:

        async def stop() -> None:
            await listener.close()
            await services.close()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
