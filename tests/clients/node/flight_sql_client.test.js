// @lakehouse-rs/flight-sql-client against a running Raindrop. Driven by
// tests/clients/test_matrix.py, which passes the server and the expected
// answers (computed in Python from the loaded data) in the environment:
//   RAINDROP_ADDR   host:port of a plaintext server
//   RAINDROP_TOKEN  a read_write token for the tenant
//   RAINDROP_EXPECT JSON: count, model, model_count, seed rows, table name
// The client has no bind-parameter API and no ingest call: filters are
// literal SQL and writes are SQL sent through query().

const { test, before } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { createFlightSqlClient } = require('@lakehouse-rs/flight-sql-client');
const { tableFromIPC } = require('apache-arrow');

const [host, port] = process.env.RAINDROP_ADDR.split(':');
const token = process.env.RAINDROP_TOKEN;
const expect = JSON.parse(process.env.RAINDROP_EXPECT);
const seedSql = fs.readFileSync(path.join(__dirname, '../../../sql/seed-query.sql'), 'utf8');

let client;
before(async () => {
  client = await createFlightSqlClient({ host, port: Number(port), tls: false, token, headers: [] });
});

async function query(sql) {
  return tableFromIPC(await client.query(sql));
}

async function queryMeta(call) {
  return tableFromIPC(await call()).toArray().map((r) => r.toJSON());
}

function close(got, want, rel) {
  return Math.abs(got - want) <= rel * Math.max(Math.abs(want), 1e-300);
}

test('count', async () => {
  const t = await query(expect.count_sql);
  assert.equal(Number(t.get(0).n), expect.count);
});

test('filter (literal: the client cannot bind parameters)', async () => {
  const t = await query(`SELECT count(*) AS n FROM wildedge.raw_events WHERE model_name = '${expect.model}'`);
  assert.equal(Number(t.get(0).n), expect.model_count);
});

test('metadata: schemas and tables with their Arrow schema', async () => {
  const schemas = (await queryMeta(() => client.getDbSchemas({}))).map((r) => r.db_schema_name);
  assert.deepEqual(schemas.filter((s) => s === 'wildedge' || s === 'warehouse'), ['warehouse', 'wildedge']);
  assert.ok(!schemas.some((s) => s.includes('tenants') || s.includes('globex')), schemas.join(','));

  const tables = await queryMeta(() =>
    client.getTables({ dbSchemaFilterPattern: 'wildedge', tableNameFilterPattern: 'raw_events', includeSchema: true }),
  );
  assert.equal(tables.length, 1);
  assert.equal(tables[0].table_type, 'TABLE');
  const fields = Object.fromEntries(tableFromIPC(tables[0].table_schema).schema.fields.map((f) => [f.name, f]));
  assert.equal(String(fields.event_id.type), 'Utf8');
  assert.equal(String(fields.confidence.type), 'Float64');
  assert.match(String(fields.event_timestamp.type), /^Timestamp<MICROSECOND/);
  assert.equal(String(fields.event_day.type), 'Date32<DAY>');
});

test('seed query matches DuckDB', async () => {
  const t = await query(seedSql);
  const got = t.toArray().map((r) => {
    const o = r.toJSON();
    return [
      new Date(Number(o.day)).toISOString().slice(0, 10),
      o.model_name,
      o.avg_confidence,
      o.p95_latency_ms,
      o.conversion_rate,
      Number(o.inference_count),
    ];
  });
  assert.ok(got.length > 0);
  assert.equal(got.length, expect.seed.length);
  got.forEach((g, i) => {
    const w = expect.seed[i];
    const msg = `row ${i}: got ${JSON.stringify(g)}, want ${JSON.stringify(w)}`;
    assert.deepEqual([g[0], g[1], g[5]], [w[0], w[1], w[5]], msg);
    // Same tolerances as test_clients.rows(tolerant=True).
    assert.ok(close(g[2], w[2], 1e-9) && close(g[3], w[3], 1e-5) && close(g[4], w[4], 1e-9), msg);
  });
});

test('create table, insert, read back', async () => {
  const table = expect.table;
  const created = await query(`CREATE TABLE ${table} (k VARCHAR, v BIGINT)`);
  assert.equal(Number(created.get(0).rows_affected), 0);
  const inserted = await query(`INSERT INTO ${table} VALUES ('a', 1), ('b', 2), ('c', 3)`);
  assert.equal(Number(inserted.get(0).rows_affected), 3);
  const t = await query(`SELECT k, v FROM ${table} ORDER BY k`);
  assert.deepEqual(
    t.toArray().map((r) => [r.k, Number(r.v)]),
    [['a', 1], ['b', 2], ['c', 3]],
  );
});

test('a bad token is refused', async () => {
  const bad = await createFlightSqlClient({ host, port: Number(port), tls: false, token: 'not-a-token', headers: [] });
  // The client reports only "failed to prepare statement", not the gRPC status.
  await assert.rejects(bad.query('SELECT 1'));
});
