#!/usr/bin/env node
'use strict';
// The sample app's schema migrations, run by releasegate on the host in the new release's
// directory with that release's environment (migrations.command in the inventory):
//
//   node db/migrate.js up        apply every pending db/migrations/NNN_name.sql, each in its
//                                own transaction (a failure rolls that one back and exits 1)
//   node db/migrate.js version   print the schema version: the highest NNN applied (0: none)
//   node db/migrate.js down      undo the highest applied one with its NNN_name.down.sql
//
// The database is DATABASE_URL (e.g. postgres://app:…@127.0.0.1:5432/app). The version lives
// in the table schema_migrations. Messages never print the URL.
const fs = require('fs');
const path = require('path');
const { Client } = require('pg');

const DIR = path.join(__dirname, 'migrations');
const UP = /^(\d{3})_[a-z0-9_]+\.sql$/;

function available() {
  if (!fs.existsSync(DIR)) return [];
  return fs.readdirSync(DIR)
    .filter((f) => UP.test(f) && !f.endsWith('.down.sql'))
    .sort()
    .map((f) => ({ version: Number(f.slice(0, 3)), file: f, down: f.replace(/\.sql$/, '.down.sql') }));
}

async function current(client) {
  const table = await client.query("SELECT to_regclass('schema_migrations') AS t");
  if (!table.rows[0].t) return 0;
  const r = await client.query('SELECT coalesce(max(version), 0) AS v FROM schema_migrations');
  return Number(r.rows[0].v);
}

async function inTransaction(client, fn) {
  await client.query('BEGIN');
  try {
    await fn();
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  }
}

async function up(client) {
  await client.query(
    'CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, ' +
      'applied_at timestamptz NOT NULL DEFAULT now())'
  );
  const from = await current(client);
  const pending = available().filter((m) => m.version > from);
  for (const m of pending) {
    const sql = fs.readFileSync(path.join(DIR, m.file), 'utf8');
    await inTransaction(client, async () => {
      await client.query(sql);
      await client.query('INSERT INTO schema_migrations (version) VALUES ($1)', [m.version]);
    });
    console.log(`migrate: applied ${m.file}`);
  }
  console.log(`migrate: schema ${from} -> ${await current(client)}`);
}

async function down(client) {
  const v = await current(client);
  const m = available().find((x) => x.version === v);
  if (!m || !fs.existsSync(path.join(DIR, m.down))) {
    throw new Error(`no down migration for schema version ${v} in ${path.relative(process.cwd(), DIR) || DIR}`);
  }
  const sql = fs.readFileSync(path.join(DIR, m.down), 'utf8');
  await inTransaction(client, async () => {
    await client.query(sql);
    await client.query('DELETE FROM schema_migrations WHERE version = $1', [v]);
  });
  console.log(`migrate: undid ${m.file}; schema ${v} -> ${await current(client)}`);
}

async function main() {
  const what = process.argv[2];
  if (!['up', 'down', 'version'].includes(what)) {
    console.error('usage: node db/migrate.js up|down|version');
    return 2;
  }
  if (!process.env.DATABASE_URL) {
    console.error('migrate: DATABASE_URL is not set');
    return 2;
  }
  const client = new Client({ connectionString: process.env.DATABASE_URL, connectionTimeoutMillis: 5000 });
  try {
    await client.connect();
    if (what === 'version') console.log(String(await current(client)));
    else if (what === 'up') await up(client);
    else await down(client);
    return 0;
  } catch (err) {
    console.error(`migrate: ${what} failed: ${err.message}`);
    return 1;
  } finally {
    await client.end().catch(() => {});
  }
}

main().then((code) => { process.exitCode = code; });
