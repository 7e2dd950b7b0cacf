"""`RecsvcClient` (blocking, over httpx.Client) and `AsyncRecsvcClient` (asyncio, over
httpx.AsyncClient): one method per operation of openapi.yaml, named after its operationId, plus
`send_events` (any number of events, in batches), `wait_for_training_job` and
`iter_segment_users` (all pages of a segment).

Every call sends an `X-Request-ID` (a uuid4, the same for all attempts of the call) and is
retried, when that is safe, on connection errors and on 429, 502, 503 and 504: after
`Retry-After` seconds when the answer has one (at most `max_retry_after`), else after an
exponential backoff with full jitter (uniform in 0 .. min(max_backoff, backoff * 2**attempt)).
Which calls are safe to repeat: see `_operations.IDEMPOTENT` and `UNSENT_ONLY`.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import random
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

import httpx

from recsvc_client import _operations as ops
from recsvc_client._operations import Call, encode, new_id, prepare_event
from recsvc_client._version import __version__
from recsvc_client.errors import RecsvcConnectionError
from recsvc_client.models import EventIn, IngestResult, JobOut

__all__ = ["DEFAULT_TIMEOUT", "AsyncRecsvcClient", "RecsvcClient"]

T = TypeVar("T")
P = ParamSpec("P")

# Connecting should be quick (a dead host fails fast and is retried); answers get longer.
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=3.0)

# Overridden in tests to observe the waits between attempts.
_sleep: Callable[[float], None] = time.sleep
_async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


class _Client:
    """What both clients share: settings, retry timing, batching."""

    def __init__(
        self,
        base_url: str | httpx.URL,
        api_key: str | None,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        max_retry_after: float = 30.0,
        max_batch_size: int = 1000,
        max_body_bytes: int = 2 * 1024 * 1024,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if retries < 0 or backoff < 0 or max_backoff < 0 or max_retry_after < 0:
            raise ValueError("retries, backoff, max_backoff and max_retry_after must be >= 0")
        if max_batch_size < 1 or max_body_bytes < 1:
            raise ValueError("max_batch_size and max_body_bytes must be >= 1")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.max_batch_size = max_batch_size
        self.max_body_bytes = max_body_bytes
        self._options: dict[str, Any] = {
            "base_url": base_url,
            "timeout": timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout),
            "headers": {
                "User-Agent": f"recsvc-client/{__version__}",
                **({"X-API-Key": api_key} if api_key else {}),
                **(headers or {}),
            },
        }

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds to wait before attempt number `attempt + 1` (0 is the first retry)."""
        if response is not None:
            after = retry_after(response.headers.get("retry-after"))
            if after is not None:
                return min(after, self.max_retry_after)
        return random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))

    def _should_retry(
        self,
        call: Call[Any],
        attempt: int,
        response: httpx.Response | None,
        error: httpx.TransportError | None,
    ) -> bool:
        if attempt >= self.retries:
            return False
        if error is not None:
            return isinstance(error, call.retry.errors)
        assert response is not None
        return response.status_code in call.retry.statuses

    def _batches(self, events: Iterable[EventIn | Mapping[str, Any]]) -> Iterator[list[bytes]]:
        """Encoded events (ids filled) in batches of at most `max_batch_size` events and, as
        JSON, at most `max_body_bytes` (one event larger than that goes alone: the server's
        413 says so)."""
        overhead = len(ops.EVENTS_HEAD) + len(ops.EVENTS_TAIL)
        batch: list[bytes] = []
        size = overhead
        for event in events:
            encoded = encode(prepare_event(event))
            grown = size + len(encoded) + (1 if batch else 0)
            if batch and (len(batch) >= self.max_batch_size or grown > self.max_body_bytes):
                yield batch
                batch, grown = [], overhead + len(encoded)
            batch.append(encoded)
            size = grown
        if batch:
            yield batch

    @staticmethod
    def _connection_error(
        call: Call[Any], attempts: int, error: httpx.TransportError, request_id: str
    ) -> RecsvcConnectionError:
        return RecsvcConnectionError(
            f"{call.method} {call.path}: no answer after {attempts} attempt(s): "
            f"{type(error).__name__}: {error}",
            request_id=request_id,
        )


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _signature(build: Callable[..., Any], client: str) -> inspect.Signature:
    """The builder's signature with `self` first and the result type the client returns."""
    signature = inspect.signature(build)
    result = typing.get_args(typing.get_type_hints(build)["return"])[0]
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY, annotation=client)
    return signature.replace(
        parameters=[self_param, *signature.parameters.values()], return_annotation=result
    )


def _named(method: Any, build: Callable[..., Any], client: str) -> Any:
    method.__name__ = build.__name__
    method.__qualname__ = f"{client}.{build.__name__}"
    method.__doc__ = build.__doc__
    method.__signature__ = _signature(build, client)
    return method


def _sync(build: Callable[P, Call[T]]) -> Callable[Concatenate[RecsvcClient, P], T]:
    def method(self: RecsvcClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(build(*args, **kwargs))

    return typing.cast(
        "Callable[Concatenate[RecsvcClient, P], T]", _named(method, build, "RecsvcClient")
    )


def _async(
    build: Callable[P, Call[T]],
) -> Callable[Concatenate[AsyncRecsvcClient, P], Awaitable[T]]:
    async def method(self: AsyncRecsvcClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(build(*args, **kwargs))

    return typing.cast(
        "Callable[Concatenate[AsyncRecsvcClient, P], Awaitable[T]]",
        _named(method, build, "AsyncRecsvcClient"),
    )


class RecsvcClient(_Client):
    """The blocking client. Use it as a context manager, or call `close()`.

    `timeout`: an httpx.Timeout (default: connect 3 s, read/write/pool 10 s) or seconds for all.
    `retries`: attempts after the first; `backoff`, `max_backoff`: the jittered exponential
    wait; `max_retry_after`: cap of a server's Retry-After. `max_batch_size`, `max_body_bytes`:
    the server's RECSVC_MAX_BATCH_SIZE and RECSVC_MAX_BODY_BYTES (the API does not publish
    them), used by `send_events`. `headers`: added to every request. `transport`: an httpx
    transport (tests: httpx.MockTransport; AsyncRecsvcClient also takes httpx.ASGITransport).
    `api_key` None sends no key (enough for healthz, readyz and, by default, metrics).
    """

    def __init__(
        self,
        base_url: str | httpx.URL,
        api_key: str | None,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        max_retry_after: float = 30.0,
        max_batch_size: int = 1000,
        max_body_bytes: int = 2 * 1024 * 1024,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            max_retry_after=max_retry_after,
            max_batch_size=max_batch_size,
            max_body_bytes=max_body_bytes,
            headers=headers,
        )
        self._http = httpx.Client(transport=transport, **self._options)

    def _run(self, call: Call[T]) -> T:
        request_id = new_id()
        headers = {"X-Request-ID": request_id}
        if call.body is not None:
            headers["Content-Type"] = "application/json"
        attempt = 0
        while True:
            response: httpx.Response | None = None
            error: httpx.TransportError | None = None
            try:
                response = self._http.request(
                    call.method, call.path, params=call.params, content=call.body, headers=headers
                )
            except httpx.TransportError as exc:
                error = exc
            if not self._should_retry(call, attempt, response, error):
                if error is not None:
                    raise self._connection_error(call, attempt + 1, error, request_id) from error
                assert response is not None
                return call.finish(response, request_id)
            _sleep(self._delay(attempt, response))
            attempt += 1

    healthz = _sync(ops.healthz)
    readyz = _sync(ops.readyz)
    metrics = _sync(ops.metrics)
    ingest_events = _sync(ops.ingest_events)
    event_types = _sync(ops.event_types)
    put_item = _sync(ops.put_item)
    get_item = _sync(ops.get_item)
    delete_item = _sync(ops.delete_item)
    put_items = _sync(ops.put_items)
    put_user = _sync(ops.put_user)
    get_user = _sync(ops.get_user)
    delete_user = _sync(ops.delete_user)
    train_model = _sync(ops.train_model)
    get_training_job = _sync(ops.get_training_job)
    list_models = _sync(ops.list_models)
    get_active_model = _sync(ops.get_active_model)
    activate_model = _sync(ops.activate_model)
    recommend_for_user = _sync(ops.recommend_for_user)
    recommend = _sync(ops.recommend)
    similar_items = _sync(ops.similar_items)
    popular_items = _sync(ops.popular_items)
    get_user_profile = _sync(ops.get_user_profile)
    list_segments = _sync(ops.list_segments)
    list_segment_users = _sync(ops.list_segment_users)
    item_audience = _sync(ops.item_audience)
    topic_audience = _sync(ops.topic_audience)
    stats_overview = _sync(ops.stats_overview)
    list_user_events = _sync(ops.list_user_events)

    def send_events(self, events: Iterable[EventIn | Mapping[str, Any]]) -> IngestResult:
        """Store any number of events (dicts or Event), in batches the server accepts; the
        counts add up the server's answers. Missing event ids are filled in the given objects
        before the first attempt, so every retry, and sending the same objects again after an
        error (batches before the failed one are stored), stores each event once."""
        accepted = duplicates = 0
        for batch in self._batches(events):
            result = self._run(ops.events_call(batch))
            accepted += result.accepted
            duplicates += result.duplicates
        return IngestResult(accepted=accepted, duplicates=duplicates)

    def wait_for_training_job(
        self, job_id: str, *, max_wait: float = 600.0, interval: float = 1.0
    ) -> JobOut:
        """Poll a training job until it succeeded or failed (check `.state`); TimeoutError
        after `max_wait` seconds."""
        deadline = time.monotonic() + max_wait
        while True:
            job = self.get_training_job(job_id)
            if job.finished:
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"training job {job_id} still {job.state} after {max_wait}s")
            time.sleep(interval)

    def iter_segment_users(self, segment_id: int, *, limit: int = 100) -> Iterator[str]:
        """Every learner of a segment: `list_segment_users` page after page (`limit` each),
        following `next_cursor`. Conflict when another model was activated meanwhile."""
        cursor: str | None = None
        while True:
            page = self.list_segment_users(segment_id, limit=limit, cursor=cursor)
            yield from page.users
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncRecsvcClient(_Client):
    """The asyncio client: the same methods as RecsvcClient, as coroutines. Use it as an async
    context manager, or call `aclose()`."""

    def __init__(
        self,
        base_url: str | httpx.URL,
        api_key: str | None,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        max_retry_after: float = 30.0,
        max_batch_size: int = 1000,
        max_body_bytes: int = 2 * 1024 * 1024,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            max_retry_after=max_retry_after,
            max_batch_size=max_batch_size,
            max_body_bytes=max_body_bytes,
            headers=headers,
        )
        self._http = httpx.AsyncClient(transport=transport, **self._options)

    async def _run(self, call: Call[T]) -> T:
        request_id = new_id()
        headers = {"X-Request-ID": request_id}
        if call.body is not None:
            headers["Content-Type"] = "application/json"
        attempt = 0
        while True:
            response: httpx.Response | None = None
            error: httpx.TransportError | None = None
            try:
                response = await self._http.request(
                    call.method, call.path, params=call.params, content=call.body, headers=headers
                )
            except httpx.TransportError as exc:
                error = exc
            if not self._should_retry(call, attempt, response, error):
                if error is not None:
                    raise self._connection_error(call, attempt + 1, error, request_id) from error
                assert response is not None
                return call.finish(response, request_id)
            await _async_sleep(self._delay(attempt, response))
            attempt += 1

    healthz = _async(ops.healthz)
    readyz = _async(ops.readyz)
    metrics = _async(ops.metrics)
    ingest_events = _async(ops.ingest_events)
    event_types = _async(ops.event_types)
    put_item = _async(ops.put_item)
    get_item = _async(ops.get_item)
    delete_item = _async(ops.delete_item)
    put_items = _async(ops.put_items)
    put_user = _async(ops.put_user)
    get_user = _async(ops.get_user)
    delete_user = _async(ops.delete_user)
    train_model = _async(ops.train_model)
    get_training_job = _async(ops.get_training_job)
    list_models = _async(ops.list_models)
    get_active_model = _async(ops.get_active_model)
    activate_model = _async(ops.activate_model)
    recommend_for_user = _async(ops.recommend_for_user)
    recommend = _async(ops.recommend)
    similar_items = _async(ops.similar_items)
    popular_items = _async(ops.popular_items)
    get_user_profile = _async(ops.get_user_profile)
    list_segments = _async(ops.list_segments)
    list_segment_users = _async(ops.list_segment_users)
    item_audience = _async(ops.item_audience)
    topic_audience = _async(ops.topic_audience)
    stats_overview = _async(ops.stats_overview)
    list_user_events = _async(ops.list_user_events)

    async def send_events(self, events: Iterable[EventIn | Mapping[str, Any]]) -> IngestResult:
        """Store any number of events (dicts or Event), in batches the server accepts; see
        RecsvcClient.send_events."""
        accepted = duplicates = 0
        for batch in self._batches(events):
            result = await self._run(ops.events_call(batch))
            accepted += result.accepted
            duplicates += result.duplicates
        return IngestResult(accepted=accepted, duplicates=duplicates)

    async def wait_for_training_job(
        self, job_id: str, *, max_wait: float = 600.0, interval: float = 1.0
    ) -> JobOut:
        """Poll a training job until it succeeded or failed (check `.state`); TimeoutError
        after `max_wait` seconds."""
        deadline = time.monotonic() + max_wait
        while True:
            job = await self.get_training_job(job_id)
            if job.finished:
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"training job {job_id} still {job.state} after {max_wait}s")
            await asyncio.sleep(interval)

    async def iter_segment_users(self, segment_id: int, *, limit: int = 100) -> AsyncIterator[str]:
        """Every learner of a segment, page after page; see RecsvcClient.iter_segment_users."""
        cursor: str | None = None
        while True:
            page = await self.list_segment_users(segment_id, limit=limit, cursor=cursor)
            for user_id in page.users:
                yield user_id
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
