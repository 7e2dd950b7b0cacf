"""Which users have events the serving model does not hold, so that a recommendation request for
anyone else needs no database query.

PostgreSQL only. Every insert of events (ingest.insert_events) sends NOTIFY with the users it
stored, in the same transaction, so the message goes out when the events commit. Each serving
worker LISTENs on a connection of its own and keeps the set of users with events outside its
model's cutoff (ingest.Cutoff): loaded with one query when the listener connects or a model is
activated, then grown by every notification. The set may hold users it no longer needs to,
never fewer than it should; the events themselves are still read by the one indexed query
(ingest.RecentEventsReader), only for users in the set.

Until the listener is connected (start-up, after losing the database), while more than
RECSVC_FRESH_USERS_MAX users have such events (until the next model), and on SQLite,
`may_have_events` is True for everyone: every request queries, as it would without this.

Across workers the set is as fresh as PostgreSQL's delivery of notifications (well under a
millisecond on one host): a request that reaches another worker at the very instant the user's
first new event commits may be answered without it. The worker that stored the events adds
their users itself before answering (`add`), so a client's next request to it sees them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from recsvc import db, ingest
from recsvc.ingest import Cutoff

log = logging.getLogger("recsvc.freshness")


class FreshUsers:
    """One worker's set of users with events newer than its model (see the module docstring).
    Used from the event loop only."""

    def __init__(self, engine: AsyncEngine, max_users: int = 500_000) -> None:
        self._engine = engine
        self._enabled = engine.dialect.name == "postgresql"
        self._max_users = max_users
        self._listener: asyncpg.Connection | None = None
        self._users: set[str] | None = None  # None: not known, everyone may have events
        self._cutoff: Cutoff | None = None  # the model cutoff the set is for
        self._loading: set[str] | None = None  # users notified while the load query runs
        self._full_for: Cutoff | None = None  # the cutoff whose set outgrew max_users
        self._lock = asyncio.Lock()

    @property
    def tracking(self) -> bool:
        """Whether the set is known (False: every user may have events)."""
        return self._users is not None

    @property
    def size(self) -> int:
        """Users in the set (0 while not tracking, when every user may have events)."""
        return len(self._users) if self._users is not None else 0

    def may_have_events(self, user_id: str, cutoff: Cutoff | None) -> bool:
        """False only when the user surely has no event outside `cutoff` (the set is for
        another cutoff while a model is being swapped in: then True)."""
        return self._users is None or cutoff != self._cutoff or user_id in self._users

    def add(self, user_ids: Iterable[str]) -> None:
        """These users now have events newer than the model."""
        user_ids = list(user_ids)
        if self._users is not None:
            self._users.update(user_ids)
            if len(self._users) > self._max_users:
                self._overflow(self._cutoff)
        if self._loading is not None:
            self._loading.update(user_ids)

    def _overflow(self, cutoff: Cutoff | None) -> None:
        """Past max_users the set is dropped: every request queries, as without a listener,
        until a model with another cutoff starts a new set."""
        log.warning(
            "more than %d users have events newer than the model: querying every request "
            "until the next model (RECSVC_FRESH_USERS_MAX)",
            self._max_users,
        )
        self._users, self._cutoff, self._full_for = None, None, cutoff

    async def track(self, cutoff: Cutoff | None) -> None:
        """Make sure the listener is connected and the set holds the users with events
        outside `cutoff`: one query when the listener (re)connects or the cutoff changes,
        nothing otherwise. Called on every poll, and right before a model with a new cutoff
        starts serving (the set is replaced when this returns, so switch with no await in
        between). Connection errors propagate; the set is then unknown until a later call."""
        if not self._enabled:
            return
        if cutoff is None or cutoff.max_id is not None:  # no usable cutoff: query everyone
            self.forget()
            return
        async with self._lock:
            await self._track(cutoff)

    async def _track(self, cutoff: Cutoff) -> None:
        if self._listener is None or self._listener.is_closed():
            self._users = None
            self._listener = await self._listen()
        elif self._users is not None and cutoff == self._cutoff:
            return
        elif self._users is None and cutoff == self._full_for:
            return  # too many for this model's cutoff: stay untracked until the next one
        loading: set[str] = set()
        self._loading = loading  # one load at a time: `track` holds the lock
        try:
            users = await ingest.users_outside(self._listener, cutoff)
        finally:
            self._loading = None
        self._users, self._cutoff = users | loading, cutoff
        if len(self._users) > self._max_users:
            self._overflow(cutoff)

    async def _listen(self) -> asyncpg.Connection:
        connection = await asyncpg.connect(db.asyncpg_dsn(self._engine), timeout=5)
        try:
            connection.add_termination_listener(self._lost)
            await connection.add_listener(ingest.EVENTS_CHANNEL, self._notified)
        except BaseException:
            await connection.close()
            raise
        log.info("listening for new events")
        return connection

    def _notified(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        users = ingest.notified_users(payload)
        if users is None:  # not ours: stop trusting the set until the next load
            log.warning("unexpected notification on %s: %.100r", ingest.EVENTS_CHANNEL, payload)
            self.forget()
            return
        self.add(users)

    def forget(self) -> None:
        """Query for everyone until the next successful `track`."""
        self._users, self._cutoff = None, None

    def _lost(self, _connection: object) -> None:
        log.warning("lost the new-events listener; querying every request until it is back")
        self.forget()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.remove_termination_listener(self._lost)  # not lost: closed
            await self._listener.close()
            self._listener = None
        self.forget()
