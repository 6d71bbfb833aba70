"""The leader lease of a high-availability pair, timed on the database's clock.

Not a bare advisory lock: a process paused for an hour keeps its advisory lock (its session
lives on), while a lease ends on its own. The epoch, raised by one at every takeover, is the
fencing token the `liaison_fence` trigger compares every write of a node against (migration
0013): a node that lost the lease without noticing can no longer write.

The lease has its own small engine, not the bot's pool: a renewal never waits behind the
bot's own queries, and a statement timeout bounds each call. PostgreSQL only (a pair on
SQLite is refused by the configuration check).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, create_engine, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from bot.storage.models import HaLeaderRow, with_options

LEADER_ROW = 1
NOBODY = ""  # the holder of the lease row before anyone took it
EPOCH_SETTING = "liaison.epoch"
END_WAIT_MS = 900  # below the lease connection's statement timeout


def work_name(node: str, epoch: int) -> str:
    """The application_name of a node's sessions while it acts under `epoch`: what a new
    active ends (`end_sessions`), so a paused old active's open transactions roll back."""
    return f"liaison-bot/{node}/e{epoch}"


def lease_name(node: str) -> str:
    """The application_name of a node's lease connection."""
    return f"liaison-bot/{node}/lease"


@dataclass(frozen=True)
class LeaseState:
    """The lease row as the database saw it, with the database's own time."""

    epoch: int
    holder: str
    lease_until: datetime
    now: datetime

    @property
    def held(self) -> bool:
        return self.holder != NOBODY and self.lease_until > self.now


@dataclass(frozen=True)
class Takeover:
    """This node holds the lease from now on, under `epoch`; before it, `previous` (None:
    the first holder ever)."""

    epoch: int
    previous: LeaseState | None


class LeaseStore:
    """The lease's statements, each one short transaction on the lease's own connection."""

    def __init__(self, url: str, node: str, timeout_ms: int = 1000) -> None:
        self.node = node
        own = {
            "application_name": lease_name(node),
            "connect_timeout": str(max(1, timeout_ms // 1000)),
            "options": f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}",
        }
        self.engine: Engine = create_engine(
            url,
            pool_size=1,
            max_overflow=1,
            connect_args=with_options(make_url(url).query, own),
        )

    def close(self) -> None:
        self.engine.dispose()

    def state(self) -> LeaseState | None:
        with Session(self.engine) as session:
            row = session.execute(
                select(
                    HaLeaderRow.epoch, HaLeaderRow.holder, HaLeaderRow.lease_until, func.now()
                ).where(HaLeaderRow.id == LEADER_ROW)
            ).one_or_none()
        return None if row is None else LeaseState(*row)

    def acquire(self, lease: timedelta) -> Takeover | LeaseState:
        """Take the lease if nobody holds it (expired or released): `Takeover`; else the
        state that shows who holds it until when."""
        with Session(self.engine) as session, session.begin():
            session.execute(
                insert(HaLeaderRow)
                .values(
                    id=LEADER_ROW,
                    epoch=0,
                    holder=NOBODY,
                    lease_until=func.now(),
                    acquired_at=func.now(),
                )
                .on_conflict_do_nothing(index_elements=[HaLeaderRow.id])
            )
            epoch, holder, until, now = session.execute(
                select(HaLeaderRow.epoch, HaLeaderRow.holder, HaLeaderRow.lease_until, func.now())
                .where(HaLeaderRow.id == LEADER_ROW)
                .with_for_update()
            ).one()
            before = LeaseState(epoch, holder, until, now)
            if before.held:
                return before
            session.execute(
                update(HaLeaderRow)
                .where(HaLeaderRow.id == LEADER_ROW)
                .values(
                    epoch=epoch + 1,
                    holder=self.node,
                    lease_until=func.now() + lease,
                    acquired_at=func.now(),
                )
            )
        return Takeover(epoch + 1, None if holder == NOBODY else before)

    def renew(self, epoch: int, lease: timedelta) -> bool:
        """Extend the lease from the database's now; False when this node no longer holds
        it under `epoch` (taken over: never try to take it back)."""
        with Session(self.engine) as session, session.begin():
            renewed = session.execute(
                update(HaLeaderRow)
                .where(
                    HaLeaderRow.id == LEADER_ROW,
                    HaLeaderRow.epoch == epoch,
                    HaLeaderRow.holder == self.node,
                )
                .values(lease_until=func.now() + lease)
                .returning(HaLeaderRow.epoch)
            ).first()
        return renewed is not None

    def release(self, epoch: int) -> bool:
        """End this node's lease now (a clean stop), so a standby need not wait it out."""
        with Session(self.engine) as session, session.begin():
            released = session.execute(
                update(HaLeaderRow)
                .where(
                    HaLeaderRow.id == LEADER_ROW,
                    HaLeaderRow.epoch == epoch,
                    HaLeaderRow.holder == self.node,
                )
                .values(lease_until=func.now() - timedelta(milliseconds=1))
                .returning(HaLeaderRow.epoch)
            ).first()
        return released is not None

    def end_sessions(self, previous: LeaseState) -> int:
        """End the previous holder's database sessions (its work and its lease connection),
        so a transaction it left open while paused rolls back; how many were ended."""
        names = [work_name(previous.holder, previous.epoch), lease_name(previous.holder)]
        with Session(self.engine) as session, session.begin():
            ended = session.execute(
                text(
                    # With a timeout, each call waits until the session is gone (or says
                    # it is not), so the old holder's open transactions have ended on return.
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, :wait_ms)) "
                    "FROM pg_stat_activity "
                    "WHERE application_name = ANY(:names) AND pid <> pg_backend_pid()"
                ),
                {"names": names, "wait_ms": END_WAIT_MS},
            ).scalar()
        return int(ended or 0)
