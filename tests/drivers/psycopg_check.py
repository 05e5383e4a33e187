"""Pieskieo through psycopg 3: exact values, routing by parameters, prepared
statements, pipeline mode, transfers across shards, errors.

Usage: psycopg_check.py URL KEY_A KEY_B  (accounts KEY_A and KEY_B, on two
different shards, exist with balance 100)."""
import datetime
import decimal
import sys

import psycopg
from psycopg.types.json import Jsonb

url, a, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
LABEL = "it's a \\ \"quote\" — zażółć 漢字 🦀"
AT = datetime.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30)))
# Negative keys and keys beyond 2^31.
IDS = [-3_000_000_000 - i for i in range(10)] + [3_000_000_000 + i for i in range(10)]


def row_for(i):
    return (i, f"{LABEL}{i}", decimal.Decimal("12.340"), AT, bytes([0, 1, 2, i % 250]), ["x", None, f"y{i}"], Jsonb({"k": i, "a": [1, None]}))


with psycopg.connect(url, autocommit=True) as conn:
    with conn.cursor() as cur:
        for i in IDS:
            cur.execute(
                "INSERT INTO items (id, label, amount, at, payload, tags, doc) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                row_for(i),
                prepare=True,
            )
        for i in IDS:
            cur.execute("SELECT id, label, amount, at, payload, tags, doc FROM items WHERE id = %s", (i,), prepare=True)
            got = cur.fetchone()
            want = row_for(i)
            assert got[:6] == want[:6], (got, want)
            assert str(got[2]) == "12.340", got[2]
            assert got[6] == {"k": i, "a": [1, None]}, got[6]
        cur.execute("SELECT id FROM items WHERE amount > %s", (decimal.Decimal("0"),))
        assert sorted(r[0] for r in cur.fetchall()) == sorted(IDS)
        try:
            cur.execute("INSERT INTO items (id, label) VALUES (%s, %s)", (IDS[0], "dup"))
            raise AssertionError("duplicate accepted")
        except psycopg.errors.UniqueViolation as e:
            assert e.sqlstate == "23505"

    # Pipeline mode: the middle segment fails, the others are unaffected.
    with conn.pipeline() as p:
        with conn.cursor() as cur:
            cur.execute("UPDATE items SET label = 'first' WHERE id = %s", (IDS[0],))
            p.sync()
            try:
                cur.execute("UPDATE items SET label = 'second' WHERE id = %s AND 1/0 = 1", (IDS[1],))
                p.sync()
            except psycopg.errors.DivisionByZero:
                pass
            cur.execute("UPDATE items SET label = 'third' WHERE id = %s", (IDS[2],))
    with conn.cursor() as cur:
        cur.execute("SELECT label FROM items WHERE id = %s", (IDS[0],))
        assert cur.fetchone()[0] == "first"
        cur.execute("SELECT label FROM items WHERE id = %s", (IDS[1],))
        assert cur.fetchone()[0] == f"{LABEL}{IDS[1]}"
        cur.execute("SELECT label FROM items WHERE id = %s", (IDS[2],))
        assert cur.fetchone()[0] == "third"

with psycopg.connect(url) as conn:
    move = "UPDATE accounts SET balance = balance + %s WHERE id = %s"
    with conn.cursor() as cur:
        # Commits on both shards.
        cur.execute(move, (-10, a))
        cur.execute(move, (10, b))
        conn.commit()
        # Rolled back.
        cur.execute(move, (-10, a))
        cur.execute(move, (10, b))
        conn.rollback()
        # Fails mid-way: 25P02 until ROLLBACK.
        cur.execute(move, (-10, a))
        try:
            cur.execute("SELECT 1 / 0")
            raise AssertionError("division by zero accepted")
        except psycopg.errors.DivisionByZero:
            pass
        try:
            cur.execute(move, (10, b))
            raise AssertionError("statement accepted in a failed transaction")
        except psycopg.errors.InFailedSqlTransaction as e:
            assert e.sqlstate == "25P02"
        conn.rollback()
        cur.execute("SELECT balance FROM accounts WHERE id = %s", (a,))
        assert cur.fetchone()[0] == 90
        cur.execute("SELECT balance FROM accounts WHERE id = %s", (b,))
        assert cur.fetchone()[0] == 110
        cur.execute("SET TimeZone = 'Asia/Tokyo'")
        cur.execute("SHOW TimeZone")
        assert cur.fetchone()[0] == "Asia/Tokyo"
    conn.commit()
print("psycopg ok")
