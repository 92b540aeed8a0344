"""What both transports share about httpx: timeouts, and what a missing answer means."""

from __future__ import annotations

from typing import Any

import httpx

from ._errors import Ambiguous, InvalidInput, SwarmstateError, Unavailable
from ._protocol import Effect, Request


def timeout_of(request_timeout: float, request: Request[Any]) -> httpx.Timeout:
    """The request's timeout: the client's, plus however long the server may hold it."""
    return httpx.Timeout(request_timeout + request.server_wait, connect=request_timeout)


def stream_timeout_of(request_timeout: float, silence: float) -> httpx.Timeout:
    """A stream's timeout: the connection and the answer's head as any request, then at most
    ``silence`` seconds between two reads."""
    return httpx.Timeout(silence, connect=request_timeout, write=request_timeout,
                         pool=request_timeout)


def transport_error(
    err: httpx.HTTPError | httpx.InvalidURL, operation: str, effect: Effect, base: str
) -> SwarmstateError:
    """A request that got no answer: ``Unavailable`` when nothing can have applied (no
    connection was made, or it was a read), ``Ambiguous`` when a write was sent."""
    message = f"{operation}: {type(err).__name__}: {err} ({base})"
    if isinstance(err, (httpx.InvalidURL, httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
        return InvalidInput(message)
    nothing_sent = isinstance(err, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
    if nothing_sent or effect is Effect.READS:
        return Unavailable(message)
    return Ambiguous(message, problem={"operation": operation})

