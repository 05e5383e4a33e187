"""Transaction-block semantics through real drivers, each compared with what
the same code does against one plain PostgreSQL.

Usage: sessions_check.py PROXY_URL PLAIN_URL KEYS
KEYS: comma-separated account ids that live on different shards (each with
balance 100 through the proxy, and the same rows on the plain server).
Prints "sessions ok" when every check passed."""
import asyncio
import sys

import asyncpg
import psycopg


def psycopg_pipeline_error(url, keys):
    """pipeline() + transaction() with an error inside: the error is raised,
    the transaction rolls back, and the connection ends IDLE."""
    with psycopg.connect(url, autocommit=True) as conn:
        raised = None
        try:
            with conn.pipeline():
                with conn.transaction():
                    conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (keys[0],))
                    conn.execute("SELECT 1/0")
                    conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (keys[1],))
        except psycopg.errors.DivisionByZero as e:
            raised = type(e).__name__
        status = conn.info.transaction_status.name
        balances = [conn.execute("SELECT balance FROM accounts WHERE id = %s", (k,)).fetchone()[0] for k in keys]
        return raised, status, balances


async def asyncpg_many(url, keys):
    """executemany over rows on every shard, outside a transaction: one bad
    row means no row anywhere; inside one, the same; fetchval of a
    cross-shard count(*) (asyncpg Executes with a row limit)."""
    conn = await asyncpg.connect(url)
    try:
        move = "UPDATE accounts SET balance = balance + $1 WHERE id = $2"
        out = {}
        try:
            await conn.executemany(move, [(5, k) for k in keys] + [(-1000, keys[-1])])
        except asyncpg.CheckViolationError:
            out["bad_row_outside"] = "CheckViolation"
        out["after_bad_outside"] = [await conn.fetchval("SELECT balance FROM accounts WHERE id = $1", k) for k in keys]
        await conn.executemany(move, [(2, k) for k in keys])
        out["after_good_outside"] = [await conn.fetchval("SELECT balance FROM accounts WHERE id = $1", k) for k in keys]
        try:
            async with conn.transaction():
                await conn.executemany(move, [(3, k) for k in keys] + [(-1000, keys[0])])
        except asyncpg.CheckViolationError:
            out["bad_row_inside"] = "CheckViolation"
        out["after_bad_inside"] = [await conn.fetchval("SELECT balance FROM accounts WHERE id = $1", k) for k in keys]
        out["count"] = await conn.fetchval("SELECT count(*) FROM accounts")
        out["sum"] = await conn.fetchval("SELECT sum(balance) FROM accounts")
        out["first"] = tuple(await conn.fetchrow("SELECT id, balance FROM accounts ORDER BY id"))
        return out
    finally:
        await conn.close()


def main(proxy, plain, keys):
    keys = [int(k) for k in keys.split(",")]
    for url in (proxy, plain):
        with psycopg.connect(url, autocommit=True) as c:
            for k in keys:
                c.execute("UPDATE accounts SET balance = 100 WHERE id = %s", (k,))
    got = psycopg_pipeline_error(proxy, keys)
    want = psycopg_pipeline_error(plain, keys)
    assert got == want, ("psycopg pipeline", got, want)
    assert got[1] == "IDLE", got
    got = asyncio.run(asyncpg_many(proxy, keys))
    want = asyncio.run(asyncpg_many(plain, keys))
    assert got == want, ("asyncpg", got, want)
    print("sessions ok", got)


if __name__ == "__main__":
    main(*sys.argv[1:])
