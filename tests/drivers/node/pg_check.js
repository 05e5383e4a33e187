// Pieskieo through node-postgres: text parameters, named statements, a cursor
// with row limits, transfers across shards.
// Usage: node pg_check.js URL KEY_A KEY_B (see psycopg_check.py).
const { Client } = require('pg');
const Cursor = require('pg-cursor');
const assert = require('assert');

const LABEL = "it's a \\ \"quote\" — zażółć 漢字 🦀";
const IDS = [];
for (let i = 0; i < 10; i++) IDS.push(-5000000000 - i, 5000000000 + i);

async function expectCode(p, code) {
  try {
    await p;
  } catch (e) {
    assert.strictEqual(e.code, code);
    return;
  }
  assert.fail(`expected ${code}`);
}

async function main(url, a, b) {
  const c = new Client({ connectionString: url });
  await c.connect();
  for (const i of IDS) {
    await c.query({
      name: 'ins',
      text: 'INSERT INTO items (id, label, amount, at, tags, doc) VALUES ($1, $2, $3, $4, $5, $6)',
      values: [String(i), LABEL + i, '1.230', '2024-02-29 23:59:58.123456+01:00', ['x', null, 'z'], { k: i, n: null }],
    });
  }
  for (const i of IDS) {
    const r = await c.query({
      name: 'by-id',
      text: "SELECT label, amount::text AS amount, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') AS at, tags, doc FROM items WHERE id = $1",
      values: [String(i)],
    });
    const row = r.rows[0];
    assert.strictEqual(row.label, LABEL + i);
    assert.strictEqual(row.amount, '1.230');
    assert.strictEqual(row.at, '2024-02-29 22:59:58.123456');
    assert.deepStrictEqual(row.tags, ['x', null, 'z']);
    assert.deepStrictEqual(row.doc, { k: i, n: null });
  }
  // A cursor with row limits (Execute with max rows, PortalSuspended) inside a block.
  const single = IDS.filter((x) => x > 0).slice(0, 1)[0];
  await c.query('BEGIN');
  const cur2 = c.query(new Cursor('SELECT generate_series(1, 5) AS n, id FROM items WHERE id = $1', [String(single)]));
  const part1 = await cur2.read(2);
  const part2 = await cur2.read(2);
  const part3 = await cur2.read(2);
  assert.deepStrictEqual([part1.length, part2.length, part3.length], [2, 2, 1]);
  await cur2.close();
  await c.query('COMMIT');

  const all = await c.query('SELECT id FROM items WHERE amount > $1', ['0']);
  assert.strictEqual(all.rows.length, IDS.length);

  const move = 'UPDATE accounts SET balance = balance + $1 WHERE id = $2';
  await c.query('BEGIN');
  await c.query(move, [-10, a]);
  await c.query(move, [10, b]);
  await c.query('COMMIT');
  await c.query('BEGIN');
  await c.query(move, [-10, a]);
  await c.query(move, [10, b]);
  await c.query('ROLLBACK');
  await c.query('BEGIN');
  await c.query(move, [-10, a]);
  await expectCode(c.query('SELECT 1 / 0'), '22012');
  await expectCode(c.query(move, [10, b]), '25P02');
  await c.query('ROLLBACK');
  assert.strictEqual((await c.query('SELECT balance FROM accounts WHERE id = $1', [a])).rows[0].balance, '90');
  assert.strictEqual((await c.query('SELECT balance FROM accounts WHERE id = $1', [b])).rows[0].balance, '110');
  await expectCode(c.query('INSERT INTO accounts (id, balance) VALUES ($1, $2)', [a, 1]), '23505');
  // Several statements over two shards in one query, outside a transaction:
  // all or nothing, as in PostgreSQL.
  await expectCode(
    c.query(`UPDATE accounts SET balance = balance + 1 WHERE id = ${a}; UPDATE accounts SET balance = balance - 1000 WHERE id = ${b}`),
    '23514',
  );
  assert.strictEqual((await c.query('SELECT balance FROM accounts WHERE id = $1', [a])).rows[0].balance, '90');
  await c.end();
  console.log('node-postgres ok');
}

main(process.argv[2], process.argv[3], process.argv[4]).catch((e) => { console.error(e); process.exit(1); });
