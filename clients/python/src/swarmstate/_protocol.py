"""The HTTP API v1 without I/O: how each call is asked and how its answer is read.

Every operation is a *plan*: a generator that yields :class:`Request` objects and receives, for
each, the parsed answer (or has the call's exception thrown in). The sync and the async client
drive the same plans through their own transport, so they cannot drift apart: a method of
either client is one line that runs a plan from here.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from typing import Any, Callable, Generator, Generic, Iterable, Mapping, TypeVar, Union
from urllib.parse import quote

from ._errors import (
    Ambiguous,
    BackendError,
    InvalidInput,
    LockHeld,
    NotFound,
    SwarmstateError,
    Unavailable,
    error_from_problem,
)
from ._models import (
    Capabilities,
    Check,
    Claim,
    Delete,
    EntriesPage,
    Entry,
    ItemStatus,
    KeysPage,
    Leader,
    LeadershipHandle,
    LockHandle,
    LockHolder,
    Put,
    Status,
    TxnOp,
    TxnResult,
    Value,
    to_bytes,
)

T = TypeVar("T")

#: A duration as accepted: seconds (int or float), a ``timedelta``, or a text the server
#: understands (``"30s"``, ``"500ms"``, ``"1h 30m"``).
Duration = Union[int, float, timedelta, str]

#: The longest ``wait`` the server takes in one request; longer waits ask again.
MAX_SERVER_WAIT = 300.0

DEFAULT_PORT_URL = "http://127.0.0.1:7700"
PROBLEM_JSON = "application/problem+json"
INSTANCE_HEADER = "swarmstate-instance"


class Effect(Enum):
    """Whether a request can change the store: decides what a missing answer means."""

    READS = "reads"
    WRITES = "writes"


@dataclass(frozen=True)
class Answer:
    """A complete HTTP answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as err:
            raise BackendError(f"the server's answer does not decode as JSON: {err}") from None


@dataclass(frozen=True)
class Request(Generic[T]):
    """One HTTP request and how to read its successful answer."""

    method: str
    path: str
    operation: str
    effect: Effect
    parse: Callable[[Answer], T]
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    content: bytes | None = None
    # An absent key (problem kind ``not_found``) answers ``None`` instead of raising.
    absent_is_none: bool = False
    # Added to the client's request timeout: how long the server may hold the request.
    server_wait: float = 0.0


#: A plan: yields requests, receives their results, returns the operation's result.
Plan = Generator[Request[Any], Any, T]


def run_plan_step(plan: Plan[T], outcome: Any, error: BaseException | None) -> Request[Any]:
    """Advances ``plan`` with the previous request's result (or error). Raises
    ``StopIteration`` carrying the plan's result when it is done."""
    if error is not None:
        return plan.throw(error)
    return plan.send(outcome)


def answer_result(request: Request[T], answer: Answer) -> T | None:
    """The result of ``request`` from its answer, or the answer's error raised."""
    if 200 <= answer.status < 300:
        return request.parse(answer)
    error = answer_error(request, answer)
    if request.absent_is_none and isinstance(error, NotFound):
        return None
    raise error


def answer_error(request: Request[Any], answer: Answer) -> SwarmstateError:
    """The error an unsuccessful answer stands for: its problem document's, or, without one,
    what the status says given whether the request could write."""
    content_type = answer.headers.get("content-type", "")
    if content_type.startswith(PROBLEM_JSON):
        try:
            problem = json.loads(answer.body)
        except ValueError:
            problem = None
        if isinstance(problem, dict):
            return error_from_problem(problem, answer.status)
    text = answer.body.decode("utf-8", "replace")[:500]
    message = (
        f"{request.operation}: the server answered {answer.status} without a problem "
        f"document: {text}"
    )
    if answer.status >= 500 and request.effect is Effect.WRITES:
        return Ambiguous(message, status=answer.status, problem={"operation": request.operation})
    if answer.status == 503:
        return Unavailable(message, status=answer.status)
    return BackendError(message, status=answer.status)


# ---------------------------------------------------------------------------------------------
# Encodings


def key_path(key: str) -> str:
    """A key in a ``/v1/kv/`` path: everything after the prefix is the key, so ``/`` stays
    literal; anything that is no key character is percent-encoded (and refused by the server as
    an invalid key)."""
    if not isinstance(key, str):
        raise TypeError(f"a key is a str, got {type(key).__name__}")
    # A segment "." or ".." would be removed by URL normalization (``a/./b`` would write
    # ``a/b``); percent-encoded dots reach the server as the key's own text.
    segments = quote(key, safe="/=").split("/")
    return "/".join(s.replace(".", "%2E") if s in (".", "..") else s for s in segments)


def name_segment(name: str) -> str:
    """A lock key, election or queue name (or item id) as one path segment of the recipe
    routes: ``/`` is written ``%2F``."""
    if not isinstance(name, str):
        raise TypeError(f"a name is a str, got {type(name).__name__}")
    segment = quote(name, safe="=")
    return segment.replace(".", "%2E") if segment in (".", "..") else segment


def duration_text(value: Duration) -> str:
    """A duration as the API writes it: seconds become whole milliseconds (rounded up, so a
    positive duration never becomes 0)."""
    if isinstance(value, str):
        return value
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"a duration is seconds, a timedelta or a text, got {value!r}")
    if seconds < 0 or math.isnan(seconds) or math.isinf(seconds):
        raise InvalidInput(f"a duration must be finite and not negative, got {value!r}")
    return f"{math.ceil(seconds * 1000)}ms"


_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "msec": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hrs": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zµ]+)\s*")


def duration_seconds(value: Duration) -> float:
    """A duration in seconds; a text is read as the server reads it (``"1m 30s"``)."""
    if not isinstance(value, str):
        text = duration_text(value)
        return int(text[:-2]) / 1000
    total = 0.0
    position = 0
    while position < len(value):
        match = _PART.match(value, position)
        if not match or match.group(2) not in _UNITS:
            raise InvalidInput(f"not a duration: {value!r} (write e.g. '30s' or '500ms')")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position == 0:
        raise InvalidInput(f"not a duration: {value!r} (write e.g. '30s' or '500ms')")
    return total


def wire_value(value: Value) -> dict[str, str]:
    """A value as JSON writes it: UTF-8 text when it is valid UTF-8, base64 otherwise."""
    data = to_bytes(value)
    try:
        return {"value": data.decode("utf-8"), "encoding": "utf8"}
    except UnicodeDecodeError:
        return {"value": base64.b64encode(data).decode("ascii"), "encoding": "base64"}


def read_value(value: Any, encoding: Any, where: str) -> bytes:
    """A value as JSON wrote it."""
    if not isinstance(value, str):
        raise BackendError(f"{where}: the value is not a string: {value!r}")
    if encoding in (None, "utf8"):
        return value.encode("utf-8")
    if encoding == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as err:
            raise BackendError(f"{where}: the value is not base64: {err}") from None
    raise BackendError(f"{where}: unknown value encoding {encoding!r}")


def _condition(if_absent: bool, if_revision: int | None, where: str) -> dict[str, Any]:
    if if_absent and if_revision is not None:
        raise InvalidInput(f"{where}: if_absent and if_revision cannot both be given")
    if if_revision is not None:
        return {"if_revision": _revision(if_revision, where)}
    return {"if_absent": True} if if_absent else {}


def _revision(revision: int, where: str) -> int:
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
        raise InvalidInput(f"{where}: a revision is an int from 1, got {revision!r}")
    return revision


def wire_op(op: TxnOp) -> dict[str, Any]:
    """One transaction operation as JSON."""
    if isinstance(op, Put):
        wire: dict[str, Any] = {"op": "put", "key": op.key, **wire_value(op.value)}
        if op.ttl is not None:
            wire["ttl"] = duration_text(op.ttl)
    elif isinstance(op, Delete):
        wire = {"op": "delete", "key": op.key}
    elif isinstance(op, Check):
        wire = {"op": "check", "key": op.key}
    else:
        raise TypeError(f"a transaction operation is Put, Delete or Check, got {op!r}")
    wire.update(_condition(op.if_absent, op.if_revision, f"operation on {op.key}"))
    return wire


def wire_ops(ops: Iterable[TxnOp]) -> list[dict[str, Any]]:
    return [wire_op(op) for op in ops]


def json_body(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Parsing answers


def _revision_of(answer: Answer) -> int | None:
    data = answer.json()
    revision = data.get("revision") if isinstance(data, dict) else None
    if revision is not None and not isinstance(revision, int):
        raise BackendError(f"the server answered a revision that is not a number: {data!r}")
    return revision


def _written_revision(answer: Answer) -> int:
    revision = _revision_of(answer)
    if revision is None:
        raise BackendError("the server answered a write without its revision")
    return revision


def entry_from(data: Mapping[str, Any], where: str) -> Entry:
    try:
        return Entry(
            key=data["key"],
            value=read_value(data.get("value"), data.get("encoding"), where),
            revision=data["revision"],
            expires_in_ms=data.get("expires_in_ms"),
        )
    except (KeyError, TypeError) as err:
        raise BackendError(f"{where}: malformed entry {data!r} ({err})") from None


def txn_results(answer: Answer) -> list[TxnResult]:
    data = answer.json()
    try:
        return [TxnResult(op=r["op"], revision=r.get("revision")) for r in data["results"]]
    except (KeyError, TypeError) as err:
        raise BackendError(f"malformed transaction answer {data!r} ({err})") from None


def _build(cls: Callable[..., T], data: Any, names: Iterable[str], where: str, **extra: Any) -> T:
    if not isinstance(data, dict):
        raise BackendError(f"{where}: expected a JSON object, got {data!r}")
    try:
        return cls(**{name: data[name] for name in names}, **extra)
    except (KeyError, TypeError) as err:
        raise BackendError(f"{where}: malformed answer {data!r} ({err})") from None


def status_from(data: Any) -> Status:
    caps = data.get("capabilities") if isinstance(data, dict) else None
    capabilities = _build(
        Capabilities,
        caps,
        ("ttl_granularity_ms", "max_value_size", "watch_buffer", "durable", "replays_overwritten"),
        "status capabilities",
    )
    return _build(
        Status,
        data,
        ("version", "backend", "revision", "instance", "watch_progress_ms"),
        "status",
        capabilities=capabilities,
        raw=data,
    )


def lock_handle(data: Any) -> LockHandle:
    return _build(
        LockHandle, data, ("key", "owner", "token", "revision", "ttl"), "lock handle", raw=data
    )


def leadership_handle(data: Any) -> LeadershipHandle:
    return _build(
        LeadershipHandle,
        data,
        ("name", "candidate", "term", "revision", "ttl"),
        "leadership handle",
        raw=data,
    )


def leader_from(data: Any) -> Leader | None:
    if data is None:
        return None
    return _build(Leader, data, ("candidate", "term"), "leader")


def claim_from(data: Any, payload: bytes | None = None) -> Claim:
    """A claim handle. A heartbeat answers it without the payload: then ``payload`` is the one
    the claim had."""
    if not isinstance(data, dict):
        raise BackendError(f"claim: expected a JSON object, got {data!r}")
    if "payload" in data or payload is None:
        payload = read_value(data.get("payload"), data.get("encoding"), "claim payload")
    return _build(
        Claim,
        data,
        ("queue", "id", "worker", "attempt", "token", "lease", "item_revision", "lease_revision"),
        "claim",
        payload=payload,
        raw=data,
    )


def item_status(data: Any) -> ItemStatus:
    return _build(
        ItemStatus,
        data,
        ("id", "state", "attempts", "claimant", "lease_left_ms", "last_error"),
        "queue item",
    )


# ---------------------------------------------------------------------------------------------
# Plans: one per operation


def _one(request: Request[T]) -> Plan[T]:
    result: T = yield request
    return result


def get(key: str) -> Plan[Entry | None]:
    def parse(answer: Answer) -> Entry:
        etag = answer.headers.get("etag", "")
        try:
            revision = int(etag.strip('"'))
        except ValueError:
            raise BackendError(f"read of {key}: the answer's ETag is not a revision: {etag!r}")
        expires = answer.headers.get("swarmstate-expires-in-ms")
        return Entry(
            key=key,
            value=answer.body,
            revision=revision,
            expires_in_ms=int(expires) if expires is not None else None,
        )

    return _one(
        Request("GET", f"/v1/kv/{key_path(key)}", f"get {key}", Effect.READS, parse,
                absent_is_none=True)
    )


def put(
    key: str,
    value: Value,
    *,
    ttl: Duration | None = None,
    if_absent: bool = False,
    if_revision: int | None = None,
    idempotency_key: str | None = None,
) -> Plan[int]:
    headers: dict[str, str] = {}
    condition = _condition(if_absent, if_revision, f"put {key}")
    if "if_revision" in condition:
        headers["if-match"] = f'"{condition["if_revision"]}"'
    elif if_absent:
        headers["if-none-match"] = "*"
    if idempotency_key is not None:
        headers["idempotency-key"] = idempotency_key
    params = {"ttl": duration_text(ttl)} if ttl is not None else {}
    return _one(
        Request(
            "PUT",
            f"/v1/kv/{key_path(key)}",
            f"put {key}",
            Effect.WRITES,
            _written_revision,
            params=params,
            headers=headers,
            content=to_bytes(value),
        )
    )


def delete(key: str, *, if_revision: int | None = None) -> Plan[int | None]:
    headers = {}
    if if_revision is not None:
        headers["if-match"] = f'"{_revision(if_revision, f"delete {key}")}"'
    return _one(
        Request("DELETE", f"/v1/kv/{key_path(key)}", f"delete {key}", Effect.WRITES,
                _revision_of, headers=headers)
    )


def _page_params(pattern: str, limit: int | None, after: str | None) -> dict[str, str]:
    params = {"pattern": pattern}
    if limit is not None:
        params["limit"] = str(limit)
    if after is not None:
        params["after"] = after
    return params


def keys(pattern: str, *, limit: int | None = None, after: str | None = None) -> Plan[KeysPage]:
    def parse(answer: Answer) -> KeysPage:
        data = answer.json()
        return _build(KeysPage, data, ("keys", "next"), "key listing")

    return _one(
        Request("GET", "/v1/keys", f"keys {pattern}", Effect.READS, parse,
                params=_page_params(pattern, limit, after))
    )


def entries(
    pattern: str, *, limit: int | None = None, after: str | None = None
) -> Plan[EntriesPage]:
    def parse(answer: Answer) -> EntriesPage:
        data = answer.json()
        try:
            listed = [entry_from(e, f"entries {pattern}") for e in data["entries"]]
            return EntriesPage(entries=listed, revision=data["revision"], next=data["next"])
        except (KeyError, TypeError) as err:
            raise BackendError(f"malformed entry listing {data!r} ({err})") from None

    return _one(
        Request("GET", "/v1/entries", f"entries {pattern}", Effect.READS, parse,
                params=_page_params(pattern, limit, after))
    )


def txn(ops: Iterable[TxnOp]) -> Plan[list[TxnResult]]:
    body = json_body({"ops": wire_ops(ops)})
    return _one(Request("POST", "/v1/txn", "transaction", Effect.WRITES, txn_results,
                        content=body, headers={"content-type": "application/json"}))


def status() -> Plan[Status]:
    return _one(
        Request("GET", "/v1/status", "status", Effect.READS, lambda a: status_from(a.json()))
    )


def health() -> Plan[bool]:
    return _one(Request("GET", "/healthz", "health", Effect.READS, lambda a: True))


# Locks -----------------------------------------------------------------------------------------


def _post(path: str, operation: str, body: Any, parse: Callable[[Answer], T],
          server_wait: float = 0.0, effect: Effect = Effect.WRITES) -> Request[T]:
    return Request("POST", path, operation, effect, parse, content=json_body(body),
                   headers={"content-type": "application/json"}, server_wait=server_wait)


def _no_content(answer: Answer) -> None:
    return None


def _waiting(
    attempt: Callable[[float], Request[T]],
    wait: Duration | None,
    keep_waiting: Callable[[Any], bool],
) -> Plan[T]:
    """Asks ``attempt(wait)`` in chunks of at most the server's longest wait until the answer
    is final or the whole wait ran out. ``keep_waiting(result or error)`` says whether an
    outcome only means "not yet"."""
    total = duration_seconds(wait) if wait is not None else 0.0
    deadline = time.monotonic() + total
    while True:
        chunk = min(max(deadline - time.monotonic(), 0.0), MAX_SERVER_WAIT)
        try:
            result: T = yield attempt(chunk)
        except SwarmstateError as err:
            if keep_waiting(err) and deadline - time.monotonic() > 0.001:
                continue
            raise
        if keep_waiting(result) and deadline - time.monotonic() > 0.001:
            continue
        return result


def acquire_lock(key: str, *, ttl: Duration, owner: str, wait: Duration | None) -> Plan[LockHandle]:
    def attempt(chunk: float) -> Request[LockHandle]:
        body: dict[str, Any] = {"owner": owner, "ttl": duration_text(ttl)}
        if chunk > 0:
            body["wait"] = duration_text(chunk)
        return _post(f"/v1/locks/{name_segment(key)}/acquire", f"acquire lock {key}", body,
                     lambda a: lock_handle(a.json()), server_wait=chunk)

    return _waiting(attempt, wait, lambda outcome: isinstance(outcome, LockHeld))


def refresh_lock(handle: LockHandle) -> Plan[LockHandle]:
    return _one(_post(f"/v1/locks/{name_segment(handle.key)}/refresh", f"refresh lock {handle.key}",
                      handle.raw, lambda a: lock_handle(a.json())))


def release_lock(handle: LockHandle) -> Plan[None]:
    return _one(_post(f"/v1/locks/{name_segment(handle.key)}/release", f"release lock {handle.key}",
                      handle.raw, _no_content))


def lock_txn(handle: LockHandle, ops: Iterable[TxnOp]) -> Plan[list[TxnResult]]:
    body = {"lock": handle.raw, "ops": wire_ops(ops)}
    return _one(_post(f"/v1/locks/{name_segment(handle.key)}/txn",
                      f"transaction under lock {handle.key}", body, txn_results))


def lock_holder(key: str) -> Plan[LockHolder | None]:
    def parse(answer: Answer) -> LockHolder:
        return _build(LockHolder, answer.json(), ("key", "holder", "revision", "expires_in_ms"),
                      "lock holder")

    return _one(Request("GET", f"/v1/locks/{name_segment(key)}", f"lock holder {key}",
                        Effect.READS, parse, absent_is_none=True))


# Elections -------------------------------------------------------------------------------------


def acquire_leadership(
    name: str, *, candidate: str, ttl: Duration, wait: Duration | None
) -> Plan[LeadershipHandle]:
    def attempt(chunk: float) -> Request[LeadershipHandle]:
        body: dict[str, Any] = {"candidate": candidate, "ttl": duration_text(ttl)}
        if chunk > 0:
            body["wait"] = duration_text(chunk)
        return _post(f"/v1/elections/{name_segment(name)}/campaign", f"campaign in {name}", body,
                     lambda a: leadership_handle(a.json()), server_wait=chunk)

    return _waiting(attempt, wait, lambda outcome: isinstance(outcome, LockHeld))


def refresh_leadership(handle: LeadershipHandle) -> Plan[LeadershipHandle]:
    return _one(_post(f"/v1/elections/{name_segment(handle.name)}/refresh",
                      f"refresh leadership of {handle.name}", handle.raw,
                      lambda a: leadership_handle(a.json())))


def resign_leadership(handle: LeadershipHandle) -> Plan[None]:
    return _one(_post(f"/v1/elections/{name_segment(handle.name)}/resign",
                      f"resign leadership of {handle.name}", handle.raw, _no_content))


def leadership_txn(handle: LeadershipHandle, ops: Iterable[TxnOp]) -> Plan[list[TxnResult]]:
    body = {"leadership": handle.raw, "ops": wire_ops(ops)}
    return _one(_post(f"/v1/elections/{name_segment(handle.name)}/txn",
                      f"transaction under leadership of {handle.name}", body, txn_results))


def leader(name: str) -> Plan[Leader | None]:
    def parse(answer: Answer) -> Leader | None:
        data = answer.json()
        if not isinstance(data, dict) or "leader" not in data:
            raise BackendError(f"leader of {name}: malformed answer {data!r}")
        return leader_from(data["leader"])

    return _one(Request("GET", f"/v1/elections/{name_segment(name)}", f"leader of {name}",
                        Effect.READS, parse))


# Queues ----------------------------------------------------------------------------------------


def enqueue(queue: str, id: str, payload: Value) -> Plan[bool]:
    def parse(answer: Answer) -> bool:
        data = answer.json()
        if not isinstance(data, dict) or not isinstance(data.get("created"), bool):
            raise BackendError(f"enqueue: malformed answer {data!r}")
        return bool(data["created"])

    wire = wire_value(payload)
    body = {"id": id, "payload": wire["value"], "encoding": wire["encoding"]}
    return _one(_post(f"/v1/queues/{name_segment(queue)}/items", f"enqueue {id} in {queue}", body,
                      parse))


def claim(
    queue: str,
    *,
    worker: str,
    lease: Duration,
    wait: Duration | None,
    max_attempts: int | None,
) -> Plan[Claim | None]:
    def parse(answer: Answer) -> Claim | None:
        if answer.status == 204 or not answer.body:
            return None
        return claim_from(answer.json())

    def attempt(chunk: float) -> Request[Claim | None]:
        body: dict[str, Any] = {"worker": worker, "lease": duration_text(lease)}
        if chunk > 0:
            body["wait"] = duration_text(chunk)
        if max_attempts is not None:
            body["max_attempts"] = max_attempts
        return _post(f"/v1/queues/{name_segment(queue)}/claim", f"claim from {queue}", body, parse,
                     server_wait=chunk)

    return _waiting(attempt, wait, lambda outcome: outcome is None)


def heartbeat(claim: Claim) -> Plan[Claim]:
    return _one(_post(f"/v1/queues/{name_segment(claim.queue)}/heartbeat",
                      f"heartbeat of {claim.queue} item {claim.id}", claim.raw,
                      lambda a: claim_from(a.json(), claim.payload)))


def complete(claim: Claim, ops: Iterable[TxnOp] | None) -> Plan[list[TxnResult]]:
    body: dict[str, Any] = {"claim": claim.raw}
    if ops is not None:
        body["ops"] = wire_ops(ops)
    return _one(_post(f"/v1/queues/{name_segment(claim.queue)}/complete",
                      f"complete {claim.queue} item {claim.id}", body, txn_results))


def fail(claim: Claim, reason: str, *, max_attempts: int | None) -> Plan[str]:
    def parse(answer: Answer) -> str:
        data = answer.json()
        if not isinstance(data, dict) or not isinstance(data.get("state"), str):
            raise BackendError(f"fail: malformed answer {data!r}")
        return str(data["state"])

    body: dict[str, Any] = {"claim": claim.raw, "reason": reason}
    if max_attempts is not None:
        body["max_attempts"] = max_attempts
    return _one(_post(f"/v1/queues/{name_segment(claim.queue)}/fail",
                      f"fail {claim.queue} item {claim.id}", body, parse))


def queue_items(queue: str) -> Plan[list[ItemStatus]]:
    def parse(answer: Answer) -> list[ItemStatus]:
        data = answer.json()
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            raise BackendError(f"queue items: malformed answer {data!r}")
        return [item_status(item) for item in data["items"]]

    return _one(Request("GET", f"/v1/queues/{name_segment(queue)}/items", f"items of {queue}",
                        Effect.READS, parse))


def queue_item(queue: str, id: str) -> Plan[ItemStatus | None]:
    return _one(Request("GET", f"/v1/queues/{name_segment(queue)}/items/{name_segment(id)}",
                        f"item {id} of {queue}", Effect.READS,
                        lambda a: item_status(a.json()), absent_is_none=True))


def default_owner() -> str:
    """An owner name unique to this process and call: host, process id and a random part."""
    import os
    import secrets
    import socket

    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def refresh_interval(ttl: Duration) -> float:
    """How often a holder refreshes: every third of the TTL, as the Rust recipes do."""
    return max(duration_seconds(ttl) / 3.0, 0.001)
