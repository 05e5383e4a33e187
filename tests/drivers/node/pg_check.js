// Pieskieo through node-postgres: text parameters, unnamed and named statements.
const { Client } = require('pg');
const assert = require('assert');

const LABEL = "it's a \\ \"quote\" — zażółć 漢字 🦀";

async function main(url) {
  const c = new Client({ connectionString: url });
  await c.connect();
  for (let i = 201; i <= 220; i++) {
    await c.query('INSERT INTO items (id, label, amount, at) VALUES ($1, $2, $3, $4)',
      [i, LABEL + i, '1.230', '2024-02-29 23:59:58.123456+00']);
  }
  for (let i = 201; i <= 220; i++) {
    const r = await c.query({ name: 'by-id', text: 'SELECT label, amount::text AS amount, at FROM items WHERE id = $1', values: [i] });
    assert.strictEqual(r.rows[0].label, LABEL + i);
    assert.strictEqual(r.rows[0].amount, '1.230');
    assert.strictEqual(r.rows[0].at.toISOString(), '2024-02-29T23:59:58.123Z');
  }
  const n = await c.query('SELECT id FROM items WHERE id > $1', [200]);
  assert.strictEqual(n.rows.length, 20);
  await c.query('BEGIN');
  for (let i = 201; i <= 206; i++) {
    await c.query('INSERT INTO accounts (id, balance) VALUES ($1, $2)', [i, 5]);
  }
  await c.query('COMMIT');
  const s = await c.query('SELECT balance FROM accounts WHERE id = $1', [203]);
  assert.strictEqual(s.rows[0].balance, '5');
  try {
    await c.query('INSERT INTO accounts (id, balance) VALUES ($1, $2)', [201, 1]);
    assert.fail('duplicate accepted');
  } catch (e) {
    assert.strictEqual(e.code, '23505');
  }
  await c.end();
  console.log('node-postgres ok');
}

main(process.argv[2]).catch((e) => { console.error(e); process.exit(1); });
