"""Pieskieo through psycopg 3: exact values, routing by parameters, transactions, errors."""
import datetime
import decimal
import sys

import psycopg

url = sys.argv[1]
LABEL = "it's a \\ \"quote\" — zażółć 漢字 🦀"
AT = datetime.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=datetime.timezone.utc)

with psycopg.connect(url, autocommit=True) as conn:
    with conn.cursor() as cur:
        for i in range(1, 21):
            cur.execute(
                "INSERT INTO items (id, label, amount, at, payload) VALUES (%s, %s, %s, %s, %s)",
                (i, f"{LABEL}{i}", decimal.Decimal("12.340") * i, AT, bytes([0, 1, 2, i])),
            )
        # Enough executions for psycopg to prepare the statement server-side.
        for i in range(1, 21):
            cur.execute("SELECT label, amount, at, payload FROM items WHERE id = %s", (i,))
            label, amount, at, payload = cur.fetchone()
            assert label == f"{LABEL}{i}", label
            assert amount == decimal.Decimal("12.340") * i and str(amount).endswith("0"), amount
            assert at == AT, at
            assert payload == bytes([0, 1, 2, i]), payload
        # No key: every shard answers (cross-shard aggregates are refused).
        cur.execute("SELECT id FROM items WHERE amount > %s", (decimal.Decimal("0"),))
        assert sorted(r[0] for r in cur.fetchall()) == list(range(1, 21))
        cur.execute("SELECT NULL::text, 1.5::float8, true")
        assert cur.fetchone() == (None, 1.5, True)
        try:
            cur.execute("INSERT INTO items (id, label) VALUES (%s, %s)", (1, "dup"))
            raise AssertionError("duplicate accepted")
        except psycopg.errors.UniqueViolation as e:
            assert e.sqlstate == "23505"

with psycopg.connect(url) as conn:
    # A transaction over several shards.
    with conn.transaction():
        with conn.cursor() as cur:
            for i in range(1, 7):
                cur.execute("INSERT INTO accounts (id, balance) VALUES (%s, %s)", (i, 100))
    try:
        with conn.transaction():
            with conn.cursor() as cur:
                cur.execute("UPDATE accounts SET balance = 0 WHERE id = %s", (1,))
                cur.execute("UPDATE accounts SET balance = 0 WHERE id = %s", (2,))
                raise RuntimeError("roll back")
    except RuntimeError:
        pass
    with conn.cursor() as cur:
        cur.execute("SELECT balance FROM accounts WHERE id = %s", (1,))
        assert cur.fetchone()[0] == 100
        cur.execute("SET TimeZone = 'Asia/Tokyo'")
        cur.execute("SHOW TimeZone")
        assert cur.fetchone()[0] == "Asia/Tokyo"
    conn.commit()
print("psycopg ok")
