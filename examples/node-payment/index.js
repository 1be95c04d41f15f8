// Baton's `payment` participant of order_fulfillment, in Node.js on a plain Redis client (ioredis).
// It follows docs/wire-format.md; comments name the section (§n) each piece implements. Its own
// state (dedupe records, charges, credit, a ledger) lives in Redis too: see README.md.
'use strict';

const crypto = require('node:crypto');
const os = require('node:os');
const { Redis } = require('ioredis');

// -- settings: the environment variables Baton's own processes read -----------------------------
const env = process.env;
const P = env.BATON_STREAM_PREFIX || 'baton';
const REDIS_URL = env.REDIS_URL || 'redis://127.0.0.1:6379/0';
const VISIBILITY_MS = Math.round(1000 * Number(env.BATON_VISIBILITY_TIMEOUT || 30));
const MAX_DELIVERIES = Number(env.BATON_MAX_DELIVERIES || 5);
const BLOCK_MS = Number(env.BATON_BLOCK_MS || 2000);
const NAME = 'payment';
const CONSUMER = `${os.hostname()}-${process.pid}`; // §2: one consumer name per process
const MAX_ENTRY_BYTES = 1048576;
const DEDUPE_TTL_S = 7 * 24 * 3600; // far longer than any redelivery (§4.3) or command retry (§6)

// -- §1 streams, and the keys of this participant's own state -----------------------------------
const eventStream = (type) => `${P}:event:${type}`;
const COMMANDS = `${P}:command:${NAME}`;
const DEAD = `${P}:dead:${NAME}`;
const STREAMS = [eventStream('order.placed'), COMMANDS];
const key = {
  processed: (dedupeKey) => `${P}:payment:processed:${dedupeKey}`, // the answer sent, as JSON
  charges: (correlationId) => `${P}:payment:charges:${correlationId}`, // hash: order_id -> charge
  used: (customerId) => `${P}:payment:used:${customerId}`, // credit used, in cents
  ledger: `${P}:payment:ledger`, // append-only list: one JSON line per charge and per refund
};

// -- the charge rule of participants/reference/payment.py ---------------------------------------
// A charge succeeds while used credit + total_amount stays within the customer's limit (in the
// order's currency); a workflow's order is charged once; a refund restores the credit once.
const LIMITS = { 'cust-gold': 1_000_000_00, 'cust-silver': 5_000_00, 'cust-small': 50_00, 'cust-broke': 0 };
const DEFAULT_LIMIT = 10_000_00; // in cents
const cents = (amount) => Math.round(Number((amount * 100).toPrecision(15)));
const money = (c) => (c / 100).toFixed(2);

// -- §3 the envelope and §10 the payloads (version 1) -------------------------------------------
class Malformed extends Error {}
const re = (pattern, says) => [(v) => typeof v === 'string' && pattern.test(v), says];
const str = (min, max = Infinity) =>
  [(v) => typeof v === 'string' && v.length >= min && v.length <= max, `must be a string of ${min} to ${max} characters`];
const amount = [(v) => typeof v === 'number' && Number.isFinite(v) && v >= 0, 'must be a JSON number >= 0'];
const currency = re(/^[A-Z]{3}$/, 'must be an ISO 4217 code such as EUR');
const item = (i) => i !== null && typeof i === 'object' && str(1, 128)[0](i.product_id) &&
  Number.isInteger(i.quantity) && i.quantity >= 1 && amount[0](i.unit_price);
const items = [(v) => Array.isArray(v) && v.length > 0 && v.every(item),
  'must be a non-empty list of {product_id, quantity >= 1, unit_price >= 0}'];
const orderId = str(1, 128);
const ORDER = { order_id: orderId, customer_id: str(1, 128), items, total_amount: amount, currency };
const FAILED = { order_id: orderId, reason: str(1) };
const SCHEMAS = { // tolerant readers: fields not named here pass through
  'order.placed': ORDER, 'payment.charge': ORDER, 'payment.refund': { order_id: orderId, reason: str(0) },
  'payment.charged': { order_id: orderId, payment_id: str(0), amount, currency },
  'payment.refunded': { order_id: orderId, payment_id: str(0), amount },
  'payment.charge_failed': FAILED, 'payment.refund_failed': FAILED,
};
const posInt = re(/^[1-9][0-9]{0,8}$/, 'must be a positive integer written as a string');
const ENVELOPE = {
  id: [isUuid, 'must be a UUID'],
  kind: re(/^(event|command)$/, 'must be event or command'),
  type: re(/^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$/, 'must be lowercase words joined by dots'),
  version: posInt,
  correlation_id: re(/^[A-Za-z0-9._:-]{1,128}$/, 'must be 1 to 128 characters from [A-Za-z0-9._:-]'),
  causation_id: str(1, 128), occurred_at: [isTime, 'must be an RFC 3339 date-time with an offset'],
  source: str(1, 64), data: [isObjectJson, 'must be a JSON object encoded as a string'],
};
const OPTIONAL = { traceparent: str(0, 256), target: re(/^[a-z][a-z0-9_-]{0,63}$/, 'must be a participant name'),
  attempt: posInt, deadline: ENVELOPE.occurred_at };

function isUuid(v) { // any spelling Python's uuid.UUID takes; dedupe compares the text as written
  const hex = v.replace(/^urn:/i, '').replace(/^uuid:/i, '').replace(/^\{|\}$/g, '').replaceAll('-', '');
  return /^[0-9a-fA-F]{32}$/.test(hex);
}
function isTime(v) {
  const m = /^(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(\.\d+)?(?:[Zz]|[+-](\d\d):(\d\d))$/.exec(v);
  if (!m) return false;
  const [y, mo, d, h, mi, s, , oh = 0, om = 0] = m.slice(1).map((x) => (x && x[0] !== '.' ? Number(x) : x));
  const day = new Date(Date.UTC(y, mo - 1, d));
  return day.getUTCMonth() === mo - 1 && day.getUTCDate() === d && h < 24 && mi < 60 && s < 60 && oh < 24 && om < 60;
}
function isObjectJson(v) {
  try { const o = JSON.parse(v); return o !== null && typeof o === 'object' && !Array.isArray(o); } catch { return false; }
}
function check(schema, values, where, required = true) {
  for (const [name, [ok, says]] of Object.entries(schema)) {
    if (values[name] === undefined) { if (required) throw new Malformed(`${where}${name}: missing`); }
    else if (!ok(values[name])) throw new Malformed(`${where}${name}: ${says}`);
  }
}
function checkPayload(type, version, data) {
  if (!SCHEMAS[type]) throw new Malformed(`no schema is registered for message type '${type}'`);
  if (version !== '1') throw new Malformed(`'${type}' has no schema version ${version}; supported: [1]`);
  check(SCHEMAS[type], data, 'data.');
}

const utf8 = new TextDecoder('utf-8', { fatal: true });
/** An entry (a flat list of Buffers) as a message, or Malformed; checks its stream too (§1). */
function decode(stream, raw) {
  if (raw === null) throw new Malformed('entry was deleted from the stream before it was processed');
  const size = raw.reduce((n, b) => n + b.length, 0);
  if (size > MAX_ENTRY_BYTES) throw new Malformed(`entry of ${size} bytes exceeds ${MAX_ENTRY_BYTES}`);
  const f = {};
  try { for (let i = 0; i < raw.length; i += 2) f[utf8.decode(raw[i])] = utf8.decode(raw[i + 1]); }
  catch (e) { throw new Malformed(`invalid message: _entry: not UTF-8: ${e.message}`); }
  try {
    check(ENVELOPE, f, '');
    check(OPTIONAL, f, '', false);
    if (f.kind === 'command') for (const name of ['target', 'attempt', 'deadline']) {
      if (f[name] === undefined) throw new Malformed(`${name}: required on a command`);
    }
  } catch (e) { throw new Malformed(`invalid message: ${e.message}`); }
  if (stream === COMMANDS) {
    if (f.kind !== 'command' || f.target !== NAME) throw new Malformed(`a ${f.kind} for '${f.target}' on the command stream of ${NAME}`);
    if (!HANDLERS[f.type]) throw new Malformed(`${NAME} has no handler for command ${f.type}`);
  } else if (f.kind !== 'event' || stream !== eventStream(f.type)) {
    throw new Malformed(`a ${f.kind} of type ${f.type} does not belong on ${stream}`);
  }
  const msg = { ...f, data: JSON.parse(f.data) };
  checkPayload(msg.type, msg.version, msg.data);
  return msg;
}

// -- §5, §6 the work: each handler reads inside the WATCH and queues its writes on `tx` ----------
const HANDLERS = { 'order.placed': charge, 'payment.charge': charge, 'payment.refund': refund };

async function charge(db, tx, msg) {
  const { order_id: orderId, customer_id: customer, currency: cur } = msg.data;
  const charges = key.charges(msg.correlation_id);
  const earlier = JSON.parse(await db.hget(charges, orderId));
  if (earlier?.status === 'charged') return ['payment.charged', chargedData(earlier)]; // per workflow (§5)
  await db.watch(key.used(customer));
  const limit = LIMITS[customer] ?? DEFAULT_LIMIT;
  const total = cents(msg.data.total_amount);
  const used = Number(await db.get(key.used(customer)));
  if (used + total > limit) {
    const reason = `card declined: credit limit ${money(limit)} ${cur} exceeded by ${money(used + total - limit)}`;
    return ['payment.charge_failed', { order_id: orderId, reason }];
  }
  const made = { payment_id: `pay_${crypto.randomUUID().replaceAll('-', '')}`, order_id: orderId,
    customer_id: customer, amount: total, currency: cur, status: 'charged', correlation_id: msg.correlation_id };
  tx.incrby(key.used(customer), total).hset(charges, orderId, JSON.stringify(made))
    .rpush(key.ledger, JSON.stringify({ kind: 'charge', ...made, message_id: msg.id, at: now() }));
  return ['payment.charged', chargedData(made)];
}
const chargedData = (c) => ({ order_id: c.order_id, payment_id: c.payment_id, amount: c.amount / 100,
  currency: c.currency, customer_id: c.customer_id });

async function refund(db, tx, msg) {
  const orderId = msg.data.order_id;
  const charges = key.charges(msg.correlation_id);
  const made = JSON.parse(await db.hget(charges, orderId));
  if (!made) return ['payment.refund_failed', { order_id: orderId, reason: `no charge to refund for order ${orderId}` }];
  if (made.status === 'charged') { // refund once; a later attempt answers the same again (§6)
    tx.hset(charges, orderId, JSON.stringify({ ...made, status: 'refunded' }))
      .decrby(key.used(made.customer_id), made.amount)
      .rpush(key.ledger, JSON.stringify({ kind: 'refund', ...made, status: 'refunded', reason: msg.data.reason,
        message_id: msg.id, attempt: msg.attempt, at: now() }));
  }
  return ['payment.refunded', { order_id: orderId, payment_id: made.payment_id, amount: made.amount / 100 }];
}

const now = () => new Date().toISOString(); // 2026-12-01T15:05:11.250Z (§3 times)

/** §5: an event answering `msg`, with every envelope field, as the flat map XADD writes. */
function answer(msg, type, data) {
  checkPayload(type, '1', data); // check what you send (§3)
  const out = { id: crypto.randomUUID(), kind: 'event', type, version: '1', correlation_id: msg.correlation_id,
    causation_id: msg.id, occurred_at: now(), source: NAME, data: JSON.stringify(data) };
  if (msg.traceparent) out.traceparent = msg.traceparent;
  return out;
}

// -- §4.1 steps 4-7: dedupe and work in one transaction, then publish, then acknowledge ---------
async function handle(db, stream, entryId, msg) {
  const dedupeKey = msg.kind === 'command' ? `${msg.id}#${msg.attempt}` : msg.id; // §4.2
  const processed = key.processed(dedupeKey);
  let sent;
  for (;;) { // an optimistic transaction: WATCH what is read, then MULTI/EXEC; redo if it changed
    await db.watch(processed, key.charges(msg.correlation_id));
    try {
      const stored = await db.get(processed);
      if (stored) { sent = JSON.parse(stored); await db.unwatch(); break; } // a duplicate: send again
      const tx = db.multi();
      const [type, data] = await HANDLERS[msg.type](db, tx, msg);
      sent = answer(msg, type, data);
      tx.set(processed, JSON.stringify(sent), 'EX', DEDUPE_TTL_S); // the dedupe record holds the answer
      const done = await tx.exec(); // null: a watched key changed meanwhile, so do it all again
      if (done === null) continue;
      const failed = done.find(([error]) => error);
      if (failed) throw failed[0];
      break;
    } catch (e) { await db.unwatch(); throw e; }
  }
  await db.xadd(eventStream(sent.type), '*', ...Object.entries(sent).flat()); // publish after commit
  await db.xack(stream, NAME, entryId); // acknowledge after publishing
  console.log(`${msg.type} ${msg.correlation_id} -> ${sent.type} ${sent.id}`);
}

// -- §8 dead letters ----------------------------------------------------------------------------
async function deadLetter(db, stream, entryId, raw, reason, deliveries) {
  const fields = (raw || []).map((b) => b.subarray(0, 64 * 1024));
  fields.push('dead_reason', reason.slice(0, 2000), 'dead_stream', stream, 'dead_entry_id', entryId,
    'dead_participant', NAME, 'dead_consumer', CONSUMER, 'dead_deliveries', String(deliveries), 'dead_at', now());
  await db.multi().xadd(DEAD, '*', ...fields).xack(stream, NAME, entryId).exec();
  lastError.delete(entryId);
  console.log(`dead-lettered ${stream} ${entryId}: ${reason}`);
}

const lastError = new Map(); // entry id -> the last error this process met, for its dead letter

async function processEntry(db, stream, entryId, raw, deliveries) {
  let msg;
  try { msg = decode(stream, raw); } catch (e) {
    if (!(e instanceof Malformed)) throw e;
    return deadLetter(db, stream, entryId, raw, e.message, deliveries); // at once, and acknowledged
  }
  try { await handle(db, stream, entryId, msg); lastError.delete(entryId); } catch (e) {
    lastError.set(entryId, `${e.name}: ${e.message}`.slice(0, 500)); // not acknowledged: redelivered
    console.error(`failed ${stream} ${entryId}: ${e.stack}`);
  }
}

// -- §2 groups, §4.1 reads, §4.3 reclaims -------------------------------------------------------
async function createGroups(db) {
  for (const stream of STREAMS) {
    try { await db.xgroup('CREATE', stream, NAME, '0', 'MKSTREAM'); } catch (e) {
      if (!String(e.message).startsWith('BUSYGROUP')) throw e;
    }
  }
}

async function read(reader, db, id) {
  const block = id === '>' ? ['BLOCK', BLOCK_MS] : [];
  const reply = await reader.xreadgroupBuffer('GROUP', NAME, CONSUMER, 'COUNT', 100, ...block,
    'STREAMS', ...STREAMS, ...STREAMS.map(() => id));
  for (const [stream, entries] of reply || []) {
    for (const [entryId, raw] of entries) await processEntry(db, stream.toString(), entryId.toString(), raw, 1);
  }
}

async function reclaim(db) {
  for (const stream of STREAMS) {
    const pending = await db.xpending(stream, NAME, 'IDLE', VISIBILITY_MS, '-', '+', 100);
    for (const [entryId, , idle, count] of pending) {
      if (idle < VISIBILITY_MS * Math.min(2 ** (count - 1), 32)) continue; // backoff per delivery
      // XCLAIM (never JUSTID) counts a delivery; the min-idle lets one consumer only win the entry.
      const claimed = await db.xclaimBuffer(stream, NAME, CONSUMER, VISIBILITY_MS, entryId);
      for (const [id, raw] of claimed) {
        if (count >= MAX_DELIVERIES) {
          const error = lastError.get(entryId);
          const reason = `not acknowledged after ${count} deliveries` + (error ? `; last error: ${error}` : '');
          await deadLetter(db, stream, id.toString(), raw, reason, count);
        } else {
          await processEntry(db, stream, id.toString(), raw, count + 1);
        }
      }
    }
  }
}

async function main() {
  const reader = new Redis(REDIS_URL); // blocking reads on a connection of their own
  const db = new Redis(REDIS_URL); // transactions, answers, acknowledgements
  let stopping = false;
  for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => { stopping = true; });
  await createGroups(db);
  console.log(`${NAME} (node) started as ${CONSUMER} on ${STREAMS.join(', ')}`);
  let first = true;
  let nextReclaim = 0;
  while (!stopping) {
    try {
      if (Date.now() >= nextReclaim) { await reclaim(db); nextReclaim = Date.now() + VISIBILITY_MS / 2; }
      await read(reader, db, first ? '0' : '>'); // first what this consumer left pending (§4.1 step 1)
      first = false;
    } catch (e) {
      if (String(e.message).includes('NOGROUP')) { await createGroups(db); continue; } // §4.4
      console.error(`read failed: ${e.message}`);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
  await Promise.all([reader.quit(), db.quit()]);
  console.log(`${NAME} (node) stopped`);
}

main().catch((e) => { console.error(e); process.exit(1); });
