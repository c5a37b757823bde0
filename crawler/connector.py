"""The guarded connector: aiohttp's one session, never reaching a forbidden address.

`make_session` builds the process's single `aiohttp.ClientSession` around a
`GuardedConnector`, which refuses forbidden addresses (see `crawler.netguard`) through
aiohttp's public seams only: a `GuardedResolver` checks every DNS answer (the DNS cache
holds only checked answers), and the socket factory checks the address a socket actually
connects to right before `connect()` (covering IP literals, which bypass resolvers).
"""

from __future__ import annotations

import contextvars
import socket
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from crawler.config import HttpConfig
from crawler.errors import BlockedAddressError
from crawler.netguard import host_port_key, is_forbidden_address, normalize_allowed_hosts

# eyeballs folds several connect errors into one OSError text; this keeps them as fields.
# Connect tasks copy the context, so they append to the request's own list.
blocked_reasons: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "megane_blocked_reasons", default=None)


class BlockedSocketError(OSError):
    """Raised by the socket factory for a forbidden address (an OSError, as aiohttp expects)."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"blocked_address:{reason} ({address})")
        self.reason = reason


class AddressGuard:
    """The address policy on aiohttp's two public seams: the resolver and the socket factory.

    `GuardedResolver` refuses a whole DNS answer when any address in it is forbidden, so
    no connection is even tried; `socket_factory` (called with the exact socket address
    right before `connect()`) refuses again, which also covers IP literals (aiohttp never
    resolves those) and any path around the resolver. `allowed_hosts` (`host_port_key`
    strings) exempts exactly those host:port pairs, and the addresses they resolved to on
    that port.
    """

    def __init__(self, allowed_hosts: frozenset[str] = frozenset()) -> None:
        self.allowed_hosts = allowed_hosts
        # (address, port) pairs resolved for an allowed host; bounded by clearing.
        self._exempt_addresses: set[tuple[str, int]] = set()

    def check_answer(self, host: str, port: int, results: Sequence[ResolveResult]) -> None:
        """Raise BlockedAddressError unless `host:port` is allowed or every address is public."""
        key = host_port_key(host, port)
        if key in self.allowed_hosts:
            if len(self._exempt_addresses) > 1024:
                self._exempt_addresses.clear()
            self._exempt_addresses.update((result["host"], port) for result in results)
            return
        for result in results:
            reason = is_forbidden_address(result["host"])
            if reason is not None:
                raise BlockedAddressError(
                    key, f"blocked_address:{reason}", f"{host} resolved to {result['host']}"
                )

    def socket_factory(self, addr_info: tuple[Any, ...]) -> socket.socket:
        """aiohttp's `socket_factory` hook: a socket, unless the address is forbidden."""
        family, type_, proto, _, address = addr_info
        host, port = str(address[0]), int(address[1])
        reason = is_forbidden_address(host)
        if reason is not None and not self._exempt(host, port):
            blocked = blocked_reasons.get()
            if blocked is not None:
                blocked.append(reason)
            raise BlockedSocketError(host, reason)
        return socket.socket(family=family, type=type_, proto=proto)

    def _exempt(self, host: str, port: int) -> bool:
        return (host, port) in self._exempt_addresses or (
            host_port_key(host, port) in self.allowed_hosts
        )


class GuardedResolver(AbstractResolver):
    """An `aiohttp.abc.AbstractResolver` that filters another resolver's answers.

    `inner` defaults to aiohttp's `DefaultResolver`, which this resolver then owns and
    closes.
    """

    def __init__(self, guard: AddressGuard, inner: AbstractResolver | None = None) -> None:
        self._guard = guard
        self._inner = inner if inner is not None else aiohttp.DefaultResolver()
        self._owns_inner = inner is None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family=family)
        self._guard.check_answer(host, port, results)
        return results

    async def close(self) -> None:
        if self._owns_inner:
            await self._inner.close()


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector that never connects to a forbidden address (see `AddressGuard`).

    Only public constructor arguments are used (`resolver=`, `socket_factory=`); `close`
    also closes the resolver, which aiohttp leaves to whoever passed it in.
    """

    def __init__(
        self,
        *,
        allowed_hosts: frozenset[str] = frozenset(),
        resolver: AbstractResolver | None = None,
        **kwargs: Any,
    ) -> None:
        self.address_guard = AddressGuard(allowed_hosts)
        self.guarded_resolver = GuardedResolver(self.address_guard, resolver)
        super().__init__(resolver=self.guarded_resolver,
                         socket_factory=self.address_guard.socket_factory, **kwargs)

    async def close(self, *, abort_ssl: bool = False) -> None:
        try:
            await super().close(abort_ssl=abort_ssl)
        finally:
            await self.guarded_resolver.close()


def make_session(
    config: HttpConfig, *, resolver: AbstractResolver | None = None
) -> aiohttp.ClientSession:
    """The process's one ClientSession: guarded connector, limits and timeouts from config.

    Cookies are not kept (a crawler has no session to keep, and a shared jar would leak
    cookies across sources); proxies from the environment are ignored. Each read waits at
    most `timeout_s`; the Fetcher bounds a whole download by `timeout_s` as well.
    `resolver` replaces the system resolver (tests use it to answer with private addresses).
    """
    connector = GuardedConnector(
        allowed_hosts=normalize_allowed_hosts(config.allowed_private_hosts),
        limit=config.max_connections,
        limit_per_host=config.per_host_connections,
        resolver=resolver,
    )
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": config.user_agent},
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout_s, sock_read=config.timeout_s
        ),
        # Decompressed bytes are what the Fetcher counts, so a gzip bomb meets the cap;
        # aiohttp inflates in bounded steps as the body is read.
        auto_decompress=True,
        raise_for_status=False,
    )
