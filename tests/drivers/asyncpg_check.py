"""Pieskieo through asyncpg: binary parameters and results, named statements."""
import asyncio
import datetime
import decimal
import sys
import uuid

import asyncpg

LABEL = "it's a \\ \"quote\" — zażółć 漢字 🦀"
AT = datetime.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=datetime.timezone.utc)


async def main(url):
    conn = await asyncpg.connect(url, statement_cache_size=100)
    insert = await conn.prepare(
        "INSERT INTO items (id, label, amount, at, payload) VALUES ($1, $2, $3, $4, $5)"
    )
    for i in range(101, 121):
        await insert.fetch(i, f"{LABEL}{i}", decimal.Decimal("0.005") * i, AT, bytes([i, 0, 255]))
    select = await conn.prepare("SELECT label, amount, at, payload FROM items WHERE id = $1")
    for i in range(101, 121):
        row = await select.fetchrow(i)
        assert row["label"] == f"{LABEL}{i}", row
        assert row["amount"] == decimal.Decimal("0.005") * i, row
        assert row["at"] == AT, row
        assert row["payload"] == bytes([i, 0, 255]), row
    ids = await conn.fetch("SELECT id FROM items WHERE id >= $1", 101)
    assert sorted(r["id"] for r in ids) == list(range(101, 121)), ids
    u = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert await conn.fetchval("SELECT $1::uuid", u) == u
    async with conn.transaction():
        for i in range(101, 107):
            await conn.execute("INSERT INTO accounts (id, balance) VALUES ($1, $2)", i, 7)
    try:
        async with conn.transaction():
            await conn.execute("UPDATE accounts SET balance = 0 WHERE id = $1", 101)
            await conn.execute("UPDATE accounts SET balance = 0 WHERE id = $1", 102)
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    assert await conn.fetchval("SELECT balance FROM accounts WHERE id = $1", 102) == 7
    try:
        await conn.execute("INSERT INTO accounts (id, balance) VALUES ($1, $2)", 101, 1)
        raise AssertionError("duplicate accepted")
    except asyncpg.UniqueViolationError as e:
        assert e.sqlstate == "23505"
    await conn.close()
    print("asyncpg ok")


asyncio.run(main(sys.argv[1]))
