"""Pieskieo through asyncpg: binary parameters and results, named statements,
executemany, transfers across shards.

Usage: asyncpg_check.py URL KEY_A KEY_B (see psycopg_check.py)."""
import asyncio
import datetime
import decimal
import json
import sys
import uuid

import asyncpg

LABEL = "it's a \\ \"quote\" — zażółć 漢字 🦀"
AT = datetime.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=datetime.timezone(datetime.timedelta(hours=-3)))
IDS = [-4_000_000_000 - i for i in range(10)] + [4_000_000_000 + i for i in range(10)]


def row_for(i):
    return (i, f"{LABEL}{i}", decimal.Decimal("0.005"), AT, bytes([i % 250, 0, 255]), ["x", None, "z"], json.dumps({"k": i, "n": None}))


async def main(url, a, b):
    conn = await asyncpg.connect(url, statement_cache_size=100)
    await conn.executemany(
        "INSERT INTO items (id, label, amount, at, payload, tags, doc) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
        [row_for(i) for i in IDS],
    )
    select = await conn.prepare("SELECT id, label, amount, at, payload, tags, doc::text FROM items WHERE id = $1")
    for i in IDS:
        row = await select.fetchrow(i)
        want = row_for(i)
        assert tuple(row)[:6] == want[:6], (row, want)
        assert str(row["amount"]) == "0.005"
        assert json.loads(row["doc"]) == {"k": i, "n": None}
    ids = await conn.fetch("SELECT id FROM items WHERE amount > $1", decimal.Decimal(0))
    assert sorted(r["id"] for r in ids) == sorted(IDS), ids
    u = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert await conn.fetchval("SELECT $1::uuid", u) == u

    move = "UPDATE accounts SET balance = balance + $1 WHERE id = $2"
    async with conn.transaction():
        await conn.execute(move, -10, a)
        await conn.execute(move, 10, b)
    try:
        async with conn.transaction():
            await conn.execute(move, -10, a)
            await conn.execute(move, 10, b)
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    tx = conn.transaction()
    await tx.start()
    await conn.execute(move, -10, a)
    try:
        await conn.execute("SELECT 1 / 0")
        raise AssertionError("division by zero accepted")
    except asyncpg.DivisionByZeroError:
        pass
    try:
        await conn.execute(move, 10, b)
        raise AssertionError("statement accepted in a failed transaction")
    except asyncpg.InFailedSQLTransactionError as e:
        assert e.sqlstate == "25P02"
    await tx.rollback()
    assert await conn.fetchval("SELECT balance FROM accounts WHERE id = $1", a) == 90
    assert await conn.fetchval("SELECT balance FROM accounts WHERE id = $1", b) == 110
    try:
        await conn.execute("INSERT INTO accounts (id, balance) VALUES ($1, $2)", a, 1)
        raise AssertionError("duplicate accepted")
    except asyncpg.UniqueViolationError as e:
        assert e.sqlstate == "23505"
    # SQL PREPARE and EXECUTE: asyncpg prepares every query, so the
    # EXECUTE is described (its statement's columns) and bound with binary
    # results, one shard's and a merged read's.
    await conn.execute("PREPARE bal (bigint) AS SELECT id, balance FROM accounts WHERE id = $1")
    await conn.execute("PREPARE everyone AS SELECT count(*) AS n, sum(balance) AS total FROM accounts")
    row = await conn.fetchrow(f"EXECUTE bal({a})")
    assert (row["id"], row["balance"]) == (a, 90), row
    stmt = await conn.prepare(f"EXECUTE bal({b})")
    assert [x.name for x in stmt.get_attributes()] == ["id", "balance"]
    assert await stmt.fetchval(column=1) == 110
    row = await conn.fetchrow("EXECUTE everyone")
    assert (row["n"], row["total"]) == (2, 200), row
    await conn.execute("DEALLOCATE ALL")
    await conn.close()
    print("asyncpg ok")


asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
