"""Ownership in SQL: claims, lease renewals, releases, and the fencing of applies.

Each function runs inside the writer's ``BEGIN IMMEDIATE`` transaction (see
:mod:`adapters.sqlite.writer`), so two claimers, in two processes, never take the same
execution or webhook event, and a fenced ``apply`` sees the holders as the writes queued before
it left them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from adapters.sqlite import statements
from adapters.sqlite.rows import Row
from engine.errors import LeaseLost


def fence(
    conn: sqlite3.Connection, applies: Sequence[tuple[str | None, tuple[str, ...]]]
) -> list[LeaseLost | None]:
    """For each ``(owner, execution_ids)`` of a run of applies: ``LeaseLost`` naming the
    executions its owner does not hold, or ``None``. An unfenced apply (``owner`` ``None``)
    passes, and so does one naming an execution that is not stored: its update reports it, as
    an unfenced apply's does. The whole run is checked with one query per chunk of ids.
    """
    wanted = list(dict.fromkeys(i for owner, ids in applies if owner is not None for i in ids))
    if not wanted:
        return [None] * len(applies)
    holders: dict[str, str | None] = {}
    for chunk in statements.chunks(wanted):
        sql = statements.SELECT_OWNERS.format(marks=statements.marks(len(chunk)))
        holders.update((row[0], row[1]) for row in conn.execute(sql, chunk))
    verdicts: list[LeaseLost | None] = []
    for owner, ids in applies:
        lost = None
        if owner is not None and all(i in holders for i in ids):
            not_held = [i for i in ids if holders[i] != owner]
            if not_held:
                lost = LeaseLost(not_held)
        verdicts.append(lost)
    return verdicts


def claim(
    conn: sqlite3.Connection,
    owner: str,
    now: float,
    lease_until: float,
    limit: int | None,
    ids: list[str] | None,
    takeable: list[str],
) -> list[Row]:
    """Take the claimable executions (see ``SqliteStorage.claim``); their rows, oldest first.

    Claimable: unheld, expired, or held by one of ``takeable``. Without ``ids``, the unfinished
    claimable ones; with ``ids``, those of them that are finished or claimable."""
    claimable = (now, *takeable)
    marks = statements.marks(len(takeable))
    if ids is None:
        sql = statements.SELECT_CLAIMABLE.format(marks=marks)
        found = conn.execute(sql, (*claimable, -1 if limit is None else limit))
        seqs = [int(row[0]) for row in found]
    else:
        seqs = []
        for chunk in statements.chunks(ids):
            sql = statements.SELECT_CLAIMABLE_IDS.format(
                ids=statements.marks(len(chunk)), marks=marks
            )
            seqs += [int(row[0]) for row in conn.execute(sql, (*chunk, *claimable))]
        seqs.sort()
        if limit is not None:
            del seqs[limit:]
    if not seqs:
        return []
    conn.executemany(statements.TAKE, [(owner, lease_until, seq) for seq in seqs])
    rows: list[Row] = []
    for chunk in statements.chunks(seqs):
        sql = statements.SELECT_BY_SEQ.format(marks=statements.marks(len(chunk)))
        rows += [tuple(row) for row in conn.execute(sql, chunk)]
    return rows


def claim_outbox(
    conn: sqlite3.Connection, owner: str, now: float, lease_until: float, takeable: list[str]
) -> list[Row]:
    """Take the pending webhook events of claimable finished executions; their rows."""
    sql = statements.SELECT_CLAIMABLE_EVENTS.format(marks=statements.marks(len(takeable)))
    rows = [tuple(row) for row in conn.execute(sql, (now, *takeable))]
    taken = dict.fromkeys(row[1] for row in rows)
    conn.executemany(statements.TAKE_BY_ID, [(owner, lease_until, i) for i in taken])
    return rows


def renew(conn: sqlite3.Connection, owner: str, lease_until: float) -> set[str]:
    """Extend ``owner``'s leases on unfinished executions, and on finished ones with pending
    webhook events; return the unfinished ones."""
    conn.execute(statements.RENEW, (lease_until, owner))
    conn.execute(statements.RENEW_OUTBOX, (lease_until, owner))
    held = conn.execute(statements.SELECT_HELD, (owner,))
    return {str(row[0]) for row in held}


def release(conn: sqlite3.Connection, owner: str, ids: list[str] | None) -> None:
    """Give up ``owner``'s holds: on its unfinished executions, or on those of ``ids`` it holds."""
    if ids is None:
        conn.execute(statements.RELEASE_ALL, (owner,))
    else:
        conn.executemany(statements.RELEASE_ONE, [(i, owner) for i in ids])
