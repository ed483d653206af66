'use strict';
// sampleapp: the tiny HTTP service that releasegate deploys in the demo,
// the integration tests and the benchmarks. Plain `http`, CommonJS, Node >= 18.

const http = require('http');
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const ms = require('ms');

const START = Date.now();

// ---------------------------------------------------------------- config --
function fail(msg) {
  console.error(`sampleapp: ${msg}`);
  process.exit(1);
}

const env = process.env;
const PORT = env.PORT === undefined || env.PORT === '' ? 3000 : Number(env.PORT);
if (!Number.isInteger(PORT) || PORT < 0 || PORT > 65535) fail('PORT must be an integer 0-65535');
const HOST = env.HOST || '127.0.0.1';
const RELEASE_ID = env.RELEASE_ID || 'dev';
// releasegate gives the app RELEASE_ID and REVISION (the commit sha); APP_REVISION is the
// older name, still read when REVISION is unset.
const REVISION = env.REVISION || env.APP_REVISION || null;
const HEALTH_TOKEN = env.HEALTH_TOKEN || '';
const METRICS_TOKEN = env.METRICS_TOKEN || '';
// A stand-in for a shared dependency (a database): readiness fails while this file is missing.
const READY_REQUIRES = env.READY_REQUIRES || '';
const CORS_ORIGINS = new Set((env.CORS_ORIGINS || '').split(',').map((s) => s.trim()).filter(Boolean));
const MAX_BODY_BYTES = 16 * 1024;
// The real dependency: with DATABASE_URL set (releasegate's secrets), readiness also needs the
// database to answer within DB_TIMEOUT_MS and its schema to be at least the version this
// release's own migrations (db/migrations/NNN_*.sql) reach.
const DATABASE_URL = env.DATABASE_URL || '';
const DB_TIMEOUT_MS = 1000;
const MAX_ITEMS = 10000;

// ---------------------------------------------------------------- faults --
// The FAULT file in the app directory is how a release carries its fault;
// a non-empty FAULT env var overrides it.
function readFaultFile() {
  try {
    return fs.readFileSync(path.join(__dirname, 'FAULT'), 'utf8').split(/\r?\n/)[0].trim();
  } catch (_) {
    return '';
  }
}

// "N" means N seconds; ms-style strings such as "1500ms" or "2s" also work.
function parseDuration(arg) {
  if (/^\d+(\.\d+)?$/.test(arg)) return Number(arg) * 1000;
  const v = typeof arg === 'string' && arg ? ms(arg) : undefined;
  return typeof v === 'number' && v >= 0 ? v : null;
}

function parseFault(raw) {
  if (!raw) return null;
  const colon = raw.indexOf(':');
  const name = (colon === -1 ? raw : raw.slice(0, colon)).trim();
  const arg = colon === -1 ? '' : raw.slice(colon + 1).trim();
  if (['ready_503', 'ready_hang', 'boot_crash', 'wrong_contract', 'wrong_version', 'endless_api', 'trickle_ready'].includes(name) && !arg) return { name, raw };
  if (['slow_ready', 'crash_after', 'errors_after', 'slow_api', 'flaky_after'].includes(name)) {
    const delayMs = parseDuration(arg);
    if (delayMs !== null) return { name, raw, delayMs };
  }
  console.error(`sampleapp: warning: unknown FAULT value ${JSON.stringify(raw.slice(0, 64))} ignored, running healthy`);
  return null;
}

const FAULT = parseFault((env.FAULT || '').trim() || readFaultFile());

if (FAULT && FAULT.name === 'boot_crash') fail('boot_crash fault: refusing to start');

// The version this process reports (/version, /health/ready, X-Release-Id, X-Revision,
// /metrics). wrong_version: a stale build answers — it reports a version it was not given.
const STALE = FAULT && FAULT.name === 'wrong_version';
const REPORTED_RELEASE = STALE ? '19700101000000-0000000' : RELEASE_ID;
const REPORTED_REVISION = STALE ? '0000000000000000000000000000000000000000' : REVISION;
const HEADER_SAFE = /^[\x21-\x7e]{1,200}$/; // a value setHeader accepts as is

// ----------------------------------------------------------------- state --
const items = new Map(
  [
    { id: 1, name: 'anvil', price_cents: 1999 },
    { id: 2, name: 'rocket skates', price_cents: 4999 },
    { id: 3, name: 'giant magnet', price_cents: 2999 },
  ].map((it) => [it.id, it])
);
let nextId = 4;
let listening = false;
let shuttingDown = false;
const hanging = new Set(); // ready_hang: readiness requests left without an answer

// endless_api: a 200 whose JSON body never ends (64 KiB chunks, as fast as the client reads).
function endless(res) {
  res.writeHead(200, { 'Content-Type': 'application/json' });
  res.write('{"items": [');
  const chunk = '"x",'.repeat(16384);
  const pump = () => {
    while (!res.destroyed && res.write(chunk)) { /* until the socket pushes back */ }
  };
  res.on('drain', pump);
  pump();
}

// trickle_ready: a 200 whose body arrives one byte every 100 ms and never completes.
function trickle(res) {
  res.writeHead(200, { 'Content-Type': 'application/json' });
  hanging.add(res);
  const timer = setInterval(() => res.write(' '), 100);
  res.on('close', () => { clearInterval(timer); hanging.delete(res); });
}
const requestCounts = new Map(); // "method\0route\0status" -> count

// -------------------------------------------------------------- database --
const SCHEMA_NEEDED = (() => {
  const dir = path.join(__dirname, 'db', 'migrations');
  if (!fs.existsSync(dir)) return 0;
  const versions = fs.readdirSync(dir)
    .filter((f) => /^\d{3}_[a-z0-9_]+\.sql$/.test(f) && !f.endsWith('.down.sql'))
    .map((f) => Number(f.slice(0, 3)));
  return versions.length ? Math.max(...versions) : 0;
})();
let pool = null;
let databaseOk = !DATABASE_URL; // the last check's verdict (for /metrics)
if (DATABASE_URL) {
  const { Pool } = require('pg');
  pool = new Pool({
    connectionString: DATABASE_URL,
    max: 2,
    connectionTimeoutMillis: DB_TIMEOUT_MS,
    query_timeout: DB_TIMEOUT_MS,
    idleTimeoutMillis: 5000,
  });
  // An idle connection lost with the database must not crash the app: the next check says so.
  pool.on('error', () => {});
}

// Resolves to '' when the database is fine, else why not (never the URL or its password).
async function databaseProblem() {
  if (!pool) return '';
  let version;
  try {
    const r = await pool.query('SELECT coalesce(max(version), 0) AS v FROM schema_migrations');
    version = Number(r.rows[0].v);
  } catch (err) {
    if (err && err.code === '42P01') version = 0; // no schema_migrations yet
    else return 'database unavailable';
  }
  if (version < SCHEMA_NEEDED) return `database schema ${version}, this release needs ${SCHEMA_NEEDED}`;
  return '';
}

function isReady() {
  if (!listening || shuttingDown) return false;
  if (READY_REQUIRES && !fs.existsSync(READY_REQUIRES)) return false;
  if (!FAULT) return true;
  if (FAULT.name === 'ready_503') return false;
  if (FAULT.name === 'slow_ready') return Date.now() - START >= FAULT.delayMs;
  if (FAULT.name === 'errors_after') return !degraded();
  return true;
}

// errors_after: healthy at first, then (a leak, a dependency gone bad) readiness 503 and the API 500.
function degraded() {
  return Boolean(FAULT && FAULT.name === 'errors_after' && Date.now() - START >= FAULT.delayMs);
}

// flaky_after: after N seconds, one GET /api/items in three answers 500 while readiness stays
// 200 — only the users (the access log, the app's own /metrics) see it.
let apiCalls = 0;
function flakyNow() {
  if (!(FAULT && FAULT.name === 'flaky_after' && Date.now() - START >= FAULT.delayMs)) return false;
  apiCalls += 1;
  return apiCalls % 3 === 0;
}

// --------------------------------------------------------------- helpers --
function tokenMatches(given, expected) {
  // Hash both sides so timingSafeEqual gets equal lengths; never log either.
  const h = (s) => crypto.createHash('sha256').update(String(s || '')).digest();
  return crypto.timingSafeEqual(h(given), h(expected));
}

function send(res, status, body, contentType = 'application/json; charset=utf-8') {
  if (shuttingDown) res.setHeader('Connection', 'close');
  if (body === undefined) {
    res.writeHead(status);
    return res.end();
  }
  const payload = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': contentType, 'Content-Length': Buffer.byteLength(payload) });
  res.end(payload);
}

function readJson(req, cb) {
  const chunks = [];
  let size = 0;
  let done = false;
  req.on('data', (c) => {
    if (done) return;
    size += c.length;
    if (size > MAX_BODY_BYTES) {
      done = true;
      return cb({ status: 413 });
    }
    chunks.push(c);
  });
  req.on('end', () => {
    if (done) return;
    done = true;
    try {
      cb(null, JSON.parse(Buffer.concat(chunks).toString('utf8')));
    } catch (_) {
      cb({ status: 400 });
    }
  });
}

function validateItem(body) {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return 'body must be a JSON object';
  const unknown = Object.keys(body).filter((k) => k !== 'name' && k !== 'price_cents');
  if (unknown.length) return `unknown field(s): ${unknown.join(', ')}`;
  if (typeof body.name !== 'string' || !body.name.trim() || body.name.length > 100) {
    return 'name must be a non-empty string of at most 100 characters';
  }
  if (!Number.isSafeInteger(body.price_cents) || body.price_cents < 0) {
    return 'price_cents must be a non-negative integer';
  }
  return null;
}

const brokenItem = (it) => ({ id: String(it.id), title: it.name }); // wrong_contract
const itemBody = (it) => (FAULT && FAULT.name === 'wrong_contract' ? { data: brokenItem(it) } : { item: it });

function escapeLabel(v) {
  return String(v).replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function renderMetrics() {
  const lines = [
    '# HELP http_requests_total Total HTTP requests handled.',
    '# TYPE http_requests_total counter',
  ];
  for (const [key, n] of requestCounts) {
    const [method, route, status] = key.split('\0');
    lines.push(`http_requests_total{method="${method}",route="${escapeLabel(route)}",status="${status}"} ${n}`);
  }
  lines.push(
    '# HELP process_uptime_seconds Seconds since the process started.',
    '# TYPE process_uptime_seconds gauge',
    `process_uptime_seconds ${((Date.now() - START) / 1000).toFixed(3)}`,
    '# HELP process_resident_memory_bytes Resident memory size in bytes.',
    '# TYPE process_resident_memory_bytes gauge',
    `process_resident_memory_bytes ${process.memoryUsage().rss}`,
    '# HELP sampleapp_ready Whether /health/ready currently answers 200.',
    '# TYPE sampleapp_ready gauge',
    `sampleapp_ready ${isReady() && databaseOk ? 1 : 0}`,
    '# HELP sampleapp_info Release information.',
    '# TYPE sampleapp_info gauge',
    `sampleapp_info{release="${escapeLabel(REPORTED_RELEASE)}",revision="${escapeLabel(REPORTED_REVISION || '')}"} 1`
  );
  return lines.join('\n') + '\n';
}

// ---------------------------------------------------------------- routes --
// Each route: { methods: {METHOD: handler(req, res, params)} }. HEAD maps to GET.
const routes = [
  ['/health/live', { GET: (req, res) => send(res, 200, { status: 'live' }) }],
  ['/health/ready', {
    GET: (req, res) => {
      if (HEALTH_TOKEN && !tokenMatches(req.headers['x-health-token'], HEALTH_TOKEN)) {
        return send(res, 401, { error: 'unauthorized' });
      }
      if (FAULT && FAULT.name === 'trickle_ready') return trickle(res);
      if (FAULT && FAULT.name === 'ready_hang') {
        // Never answered: the caller's timeout is the only way out. Dropped at shutdown.
        hanging.add(res);
        res.on('close', () => hanging.delete(res));
        return;
      }
      if (!isReady()) return send(res, 503, { status: 'not-ready' });
      if (!pool) return send(res, 200, { status: 'ready', release: REPORTED_RELEASE });
      databaseProblem().then((problem) => {
        databaseOk = !problem;
        if (problem) return send(res, 503, { status: 'not-ready', reason: problem });
        send(res, 200, { status: 'ready', release: REPORTED_RELEASE, schema: SCHEMA_NEEDED });
      });
    },
  }],
  ['/version', {
    GET: (req, res) => send(res, 200, {
      name: 'sampleapp',
      release: REPORTED_RELEASE,
      revision: REPORTED_REVISION,
      pid: process.pid,
      uptime: ms(Date.now() - START, { long: true }),
    }),
  }],
  ['/metrics', {
    GET: (req, res) => {
      const bearer = /^Bearer (.+)$/.exec(req.headers.authorization || '');
      if (METRICS_TOKEN && !tokenMatches(bearer ? bearer[1] : '', METRICS_TOKEN)) {
        res.setHeader('WWW-Authenticate', 'Bearer');
        return send(res, 401, { error: 'unauthorized' });
      }
      send(res, 200, renderMetrics(), 'text/plain; version=0.0.4; charset=utf-8');
    },
  }],
  ['/api/items', {
    GET: (req, res) => {
      if (degraded() || flakyNow()) return send(res, 500, { error: 'internal' });
      if (FAULT && FAULT.name === 'endless_api') return endless(res);
      const list = [...items.values()];
      if (FAULT && FAULT.name === 'wrong_contract') return send(res, 200, { data: list.map(brokenItem) });
      send(res, 200, { items: list });
    },
    POST: (req, res) => {
      if (!/^application\/json\b/i.test(req.headers['content-type'] || '')) {
        return send(res, 415, { error: 'unsupported_media_type', detail: 'Content-Type must be application/json' });
      }
      readJson(req, (err, body) => {
        if (err) {
          if (err.status === 413) {
            res.setHeader('Connection', 'close');
            return send(res, 413, { error: 'payload_too_large', detail: `body exceeds ${MAX_BODY_BYTES} bytes` });
          }
          return send(res, 400, { error: 'validation', detail: 'body is not valid JSON' });
        }
        const problem = validateItem(body);
        if (problem) return send(res, 400, { error: 'validation', detail: problem });
        if (items.size >= MAX_ITEMS) return send(res, 507, { error: 'store_full' });
        const item = { id: nextId++, name: body.name, price_cents: body.price_cents };
        items.set(item.id, item);
        send(res, 201, itemBody(item));
      });
    },
  }],
  [/^\/api\/items\/(\d{1,15})$/, {
    GET: (req, res, m) => {
      const item = items.get(Number(m[1]));
      if (!item) return send(res, 404, { error: 'not_found' });
      send(res, 200, itemBody(item));
    },
  }],
];

function match(pathname) {
  for (const [pattern, methods] of routes) {
    if (typeof pattern === 'string' ? pattern === pathname : pattern.test(pathname)) {
      const route = typeof pattern === 'string' ? pattern : '/api/items/:id';
      return { route, methods, params: typeof pattern === 'string' ? null : pathname.match(pattern) };
    }
  }
  return null;
}

// ---------------------------------------------------------------- server --
const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);

function handle(req, res) {
  const reqId = req.headers['x-request-id'];
  res.setHeader('X-Request-Id', typeof reqId === 'string' && /^[A-Za-z0-9._-]{1,128}$/.test(reqId) ? reqId : crypto.randomUUID());
  res.setHeader('X-Content-Type-Options', 'nosniff');
  res.setHeader('X-Frame-Options', 'DENY');
  res.setHeader('Referrer-Policy', 'no-referrer');
  // Which code answers, on every response: releasegate's health.version can check either.
  if (HEADER_SAFE.test(REPORTED_RELEASE)) res.setHeader('X-Release-Id', REPORTED_RELEASE);
  if (HEADER_SAFE.test(REPORTED_REVISION || '')) res.setHeader('X-Revision', REPORTED_REVISION);
  if (CORS_ORIGINS.size) {
    res.setHeader('Vary', 'Origin');
    const origin = req.headers.origin;
    if (origin && CORS_ORIGINS.has(origin)) {
      res.setHeader('Access-Control-Allow-Origin', origin);
      res.setHeader('Access-Control-Expose-Headers', 'X-Request-Id');
    }
  }

  let pathname;
  try {
    pathname = new URL(req.url, 'http://localhost').pathname;
  } catch (_) {
    pathname = null;
  }
  const found = pathname && match(pathname);
  const method = KNOWN_METHODS.has(req.method) ? req.method : 'OTHER';
  res.on('finish', () => {
    const key = `${method}\0${found ? found.route : 'unmatched'}\0${res.statusCode}`;
    requestCounts.set(key, (requestCounts.get(key) || 0) + 1);
  });

  if (!found) return send(res, 404, { error: 'not_found' });
  const allowed = Object.keys(found.methods);
  if (allowed.includes('GET')) allowed.push('HEAD');
  allowed.push('OPTIONS');
  if (req.method === 'OPTIONS') {
    res.setHeader('Allow', allowed.join(', '));
    res.setHeader('Access-Control-Allow-Methods', allowed.join(', '));
    res.setHeader('Access-Control-Allow-Headers', 'Content-Type, Authorization, X-Request-Id, X-Health-Token');
    res.setHeader('Access-Control-Max-Age', '600');
    return send(res, 204);
  }
  const handler = found.methods[req.method === 'HEAD' ? 'GET' : req.method];
  if (!handler) {
    res.setHeader('Allow', allowed.join(', '));
    return send(res, 405, { error: 'method_not_allowed' });
  }
  // slow_api: a release that got slower (perf regressions); health and /version stay fast.
  if (FAULT && FAULT.name === 'slow_api' && found.route.startsWith('/api/')) {
    setTimeout(() => handler(req, res, found.params), FAULT.delayMs);
    return;
  }
  handler(req, res, found.params);
}

const server = http.createServer(handle);

server.on('error', (err) => fail(`server error: ${err.code || err.message}`));

server.listen(PORT, HOST, () => {
  listening = true;
  const addr = server.address();
  console.log(`sampleapp ${RELEASE_ID} listening on ${HOST}:${addr.port} (pid ${process.pid}, fault ${FAULT ? FAULT.raw : 'none'})`);
  if (typeof process.send === 'function') process.send('ready'); // PM2 wait_ready
});

if (FAULT && FAULT.name === 'crash_after') {
  setTimeout(() => fail(`crash_after fault: exiting after ${ms(FAULT.delayMs, { long: true })}`), FAULT.delayMs);
}

function shutdown(signal) {
  if (shuttingDown) return;
  shuttingDown = true; // readiness flips to 503; in-flight responses get Connection: close
  console.log(`sampleapp ${RELEASE_ID} received ${signal}, shutting down`);
  setTimeout(() => {
    console.error('sampleapp: graceful shutdown timed out after 5s, forcing exit');
    process.exit(1);
  }, 5000).unref();
  server.close(() => process.exit(0));
  if (typeof server.closeIdleConnections === 'function') server.closeIdleConnections(); // Node >= 18.2
  for (const res of hanging) res.socket && res.socket.destroy();
}

process.on('SIGINT', () => shutdown('SIGINT'));
process.on('SIGTERM', () => shutdown('SIGTERM'));
if (typeof process.send === 'function') {
  // PM2 with shutdown_with_message sends 'shutdown' instead of a signal.
  process.on('message', (msg) => { if (msg === 'shutdown') shutdown('shutdown message'); });
}
