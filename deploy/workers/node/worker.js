#!/usr/bin/env node
// A jetdag worker in Node.js: wire protocol v1 (the main README, "Wire format (for workers in other
// languages)"). It takes tasks of its queue from JetStream, highest priority first, runs its handlers and
// reports each result through JetStream before it acks the task.
//
//   npm ci && node worker.js            # env: JETDAG_NATS, JETDAG_QUEUE, JETDAG_CONCURRENCY, ...
//   node worker.js --help
//
// Used as a library: `import { Worker, Fail, Retry, defaultHandlers } from "./worker.js"` and
// `new Worker({ url, handlers: { ...defaultHandlers, mine: async (ctx) => ... } }).run()`.

import { createHash } from "node:crypto";
import os from "node:os";
import process from "node:process";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { inflateRawSync } from "node:zlib";

import { decode, encode } from "@msgpack/msgpack";
import { AckPolicy, connect, createInbox, DeliverPolicy, headers as natsHeaders, nanos } from "nats";

export const VERSION = 1;
const TASKS = "JD_TASKS";
const WORKERS_KV = "jd_workers";
const RUNS_KV = "jd_runs";
const INTERRUPT = "jd.cmd.interrupt";
const INVALID_DLQ = "jd.dlq._invalid";
const PRIORITIES = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]; // served in this order

const ACK_WAIT_MS = 30_000; // must equal the reference worker's consumers (actors/worker.py)
const MAX_ACK_PENDING = 20_000;
const PROGRESS_EVERY_MS = ACK_WAIT_MS / 3; // in-progress acks (+WPI) for running tasks
const PROMPT_BEAT_MS = 250; // a task that starts is named by a beat this soon after the previous one
const STARTED_AFTER_MS = 100; // an attempt still running this long says task.started
const LINGER_MS = 50; // a fetch right after a doorbell waits this long for the message to be visible
const LOOK_EVERY_MS = 1_000; // while idle, look at every priority this often (redeliveries ring no bell)
const HANDED_BACK_MS = 5_000; // a task for a handler this worker lacks goes back to the queue this long
const REMEMBERED_INTERRUPTS = 10_000;
const DRAIN_TIMEOUT_MS = 10_000; // on SIGINT/SIGTERM, running tasks get this long to finish
const FAREWELL_MS = 2_000; // the heartbeat delete and the connection drain, each at most this long
const PUBLISH_TIMEOUT_MS = 5_000;
export const CANCELLED = "cancelled: the run was cancelled while the task ran";

const HANDLER_NAME = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/;
const TOKEN = /^[A-Za-z0-9_-]+$/;
const REPLY = /^jd\.evt\.[0-9]+\.([A-Za-z0-9_-]+)$/;
const JSON_START = new Set([...'{[" \t\r\n'].map((c) => c.charCodeAt(0))); // no msgpack map starts so

const bytes = (s) => new TextEncoder().encode(s);
const ACK = bytes("+ACK");
const WPI = bytes("+WPI");
const NAK = bytes("-NAK");
const TERM = bytes("+TERM");

// --- what handlers throw ---------------------------------------------------------------------------

/** Fail this task now: it is never retried, whatever attempts are left. */
export class Fail extends Error {
  constructor(reason, details = null) {
    super(reason);
    this.name = "Fail";
    this.details = details;
  }
}

/** Try this task again, after `delay` seconds if given (else the workflow's retry policy decides). */
export class Retry extends Error {
  constructor(reason = "", delay = null, details = null) {
    super(reason || "retry requested");
    this.name = "Retry";
    this.reason = reason;
    this.delay = delay;
    this.details = details;
  }
}

/** A task message that can never run: dead-lettered with `reason`, never retried. */
export class Rejected extends Error {
  constructor(reason) {
    super(reason);
    this.name = "Rejected";
    this.reason = reason;
  }
}

// --- the default handlers --------------------------------------------------------------------------

/** Resolves after `ms`, or rejects with the signal's reason as soon as `signal` aborts. */
export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * A handler gets `ctx` = {run, workflow, task, attempt, handler, payload, params, info, job, worker, signal}
 * and returns the result (anything msgpack can carry) or a promise of it; it throws `Fail` (not retryable),
 * `Retry`, or any other error (retryable). `ctx.signal` aborts when the run is cancelled or the attempt
 * times out: a handler that awaits long should pass it on (fetch(url, {signal}), sleep(ms, signal)).
 */
export const defaultHandlers = {
  echo: async (ctx) => ctx.payload,
  fail: async (ctx) => {
    const message = ctx.payload?.message;
    throw new Fail(message == null ? "failed" : String(message));
  },
  sleep: async (ctx) => {
    const seconds = ctx.payload?.seconds;
    if (typeof seconds !== "number" || !Number.isFinite(seconds) || seconds < 0) {
      throw new Fail("sleep: payload needs 'seconds' (a number >= 0)");
    }
    await sleep(seconds * 1000, ctx.signal);
    return null;
  },
};

// --- the wire format -------------------------------------------------------------------------------

/** Epoch seconds as a float: msgpack packs a whole number as an int, and the wire says float. */
function now() {
  const t = Date.now() / 1000;
  return Number.isInteger(t) ? t + 1e-6 : t;
}

const handlerToken = (handler) => handler.replace(/\./g, ":");
export const taskSubject = (queue, priority, handler) => `jd.task.${queue}.${priority}.${handlerToken(handler)}`;
export const taskConsumer = (queue, priority, handler) => `jd_task_${queue}_${priority}_${handlerToken(handler)}`;

/** {queue, priority, handler} of a task subject; null for any other subject. */
export function taskRoute(subject) {
  const parts = subject.split(".");
  if (parts.length !== 5 || parts[0] !== "jd" || parts[1] !== "task" || !/^[0-9]+$/.test(parts[3])) return null;
  return { queue: parts[2], priority: Number(parts[3]), handler: parts[4].replace(/:/g, ".") };
}

const isMap = (x) =>
  typeof x === "object" && x !== null && !Array.isArray(x) && !(x instanceof Uint8Array) && !(x instanceof Date);

function typeName(x) {
  if (x === null) return "nil";
  if (Array.isArray(x)) return "array";
  if (x instanceof Uint8Array) return "bytes";
  return typeof x;
}

const show = (x) => {
  try {
    return JSON.stringify(x) ?? String(x);
  } catch {
    return String(x);
  }
};

/** A msgpack map, or a JSON object (for people publishing by hand); anything else is Rejected. */
export function unpackMap(data) {
  if (!data || data.length === 0) throw new Rejected("empty message: expected a msgpack or JSON map");
  let body;
  try {
    body = JSON_START.has(data[0])
      ? JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(data))
      : decode(data);
  } catch (err) {
    throw new Rejected(`not valid msgpack or JSON: ${err.message}`);
  }
  if (!isMap(body)) throw new Rejected(`expected a map, got ${typeName(body)}`);
  return body;
}

const REQUIRED = ["run", "workflow", "task", "attempt", "handler", "payload", "params", "reply"];

/** The task in a message on `subject`, checked as the reference worker checks it (engine/messages.py). */
export function decodeTask(subject, data) {
  const body = unpackMap(data);
  if (body.v !== VERSION) {
    throw new Rejected(`unsupported version v=${show(body.v)} (this worker speaks v=${VERSION})`);
  }
  const missing = REQUIRED.filter((k) => !Object.hasOwn(body, k));
  if (missing.length) throw new Rejected(`task message: missing field(s) ${missing.join(", ")}`);
  for (const name of ["run", "workflow", "task", "handler", "reply"]) {
    if (typeof body[name] !== "string") throw new Rejected(`task message: field '${name}' has the wrong type`);
  }
  if (!Number.isInteger(body.attempt) || body.attempt < 1) {
    throw new Rejected("task message: field 'attempt' must be an integer >= 1");
  }
  if (body.timeout != null && (typeof body.timeout !== "number" || body.timeout < 0)) {
    throw new Rejected("task message: field 'timeout' must be a number of seconds");
  }
  if (!body.reply.startsWith("jd.evt.")) {
    throw new Rejected(`task message: reply subject ${show(body.reply)} is not a jd.evt subject`);
  }
  const route = taskRoute(subject);
  if (route !== null && route.handler !== body.handler) {
    throw new Rejected(`task message: handler ${show(body.handler)} on the subject of handler ${show(route.handler)}`);
  }
  return {
    run: body.run,
    workflow: body.workflow,
    task: body.task,
    attempt: body.attempt,
    handler: body.handler,
    payload: body.payload,
    params: isMap(body.params) ? body.params : {},
    reply: body.reply,
    timeout: body.timeout ?? null,
    queue: body.queue ?? null,
    priority: body.priority ?? null,
    info: body.info ?? null,
    job: body.job ?? null,
  };
}

/** How many times JetStream delivered `msg`, from its ack subject (1 when it cannot tell). */
export function deliveries(msg) {
  const t = (msg.reply || "").split(".");
  if (t[0] !== "$JS" || t[1] !== "ACK") return 1;
  const n = Number(t.length === 9 ? t[4] : t.length >= 11 ? t[6] : 1); // v1 and v2 (domain, hash) forms
  return Number.isInteger(n) && n > 0 ? n : 1;
}

/** Why a redelivered message for `attempt` of `task` must not run, from the run's snapshot; null: run it. */
export function superseded(snapshot, task, attempt) {
  if (!isMap(snapshot)) return null;
  const status = snapshot.status;
  if (status === "succeeded" || status === "failed" || status === "cancelled") return `the run is already ${status}`;
  const state = isMap(snapshot.tasks) ? snapshot.tasks[task] : null;
  if (!isMap(state)) return null;
  const current = state.attempt ?? 0;
  if (Number.isInteger(current) && current > attempt) return `attempt ${current} is the current one`;
  if (current === attempt && state.status !== "queued" && state.status !== "running") {
    return `attempt ${attempt} is already ${state.status}`;
  }
  return null;
}

const attemptKey = (run, task, attempt) => JSON.stringify([run, task, attempt]);

function consumerConfig(queue, priority, handler) {
  // The same config as `task_consumer_config` in actors/worker.py: the server refuses another one for a
  // durable that exists, so workers in either language can share the consumers.
  return {
    durable_name: taskConsumer(queue, priority, handler),
    filter_subject: taskSubject(queue, priority, handler),
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: nanos(ACK_WAIT_MS),
    max_deliver: -1,
    max_ack_pending: MAX_ACK_PENDING,
  };
}

// --- small tools -----------------------------------------------------------------------------------

/** An asyncio.Event: set, clear, and wait (optionally at most `ms`; resolves true when set). */
class Flag {
  constructor() {
    this.isSet = false;
    this.waiters = new Set();
  }

  set() {
    this.isSet = true;
    for (const wake of this.waiters) wake(true);
    this.waiters.clear();
  }

  clear() {
    this.isSet = false;
  }

  wait(ms = null) {
    if (this.isSet) return Promise.resolve(true);
    return new Promise((resolve) => {
      let timer = null;
      const wake = (value) => {
        if (timer !== null) clearTimeout(timer);
        this.waiters.delete(wake);
        resolve(value);
      };
      this.waiters.add(wake);
      if (ms !== null) timer = setTimeout(() => wake(false), Math.max(0, ms));
    });
  }
}

/** `promise`, or `fallback` after `ms`. */
function within(promise, ms, fallback = undefined) {
  let timer;
  const late = new Promise((resolve) => {
    timer = setTimeout(() => resolve(fallback), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

const mono = () => performance.now();
const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const LEVELS = { debug: 10, info: 20, warning: 30, error: 40 };
const threshold = LEVELS[(process.env.JETDAG_LOG_LEVEL || "info").toLowerCase()] ?? LEVELS.info;

function log(level, message) {
  if (LEVELS[level] >= threshold) {
    process.stderr.write(`${new Date().toISOString()} ${level.toUpperCase()} jetdag-worker-node: ${message}\n`);
  }
}

function errorText(err) {
  if (err instanceof Error) return `${err.name}: ${err.message}`;
  return `Error: ${String(err)}`;
}

const isTimeout = (err) => err?.code === "TIMEOUT" || err?.code === "503" || /timeout/i.test(err?.message ?? "");

// What stopped a handler (an AbortController's reason).
const INTERRUPTED = Symbol("interrupted");
const TIMED_OUT = Symbol("timed out");
const SHUTDOWN = Symbol("shutdown");
const STOPPED = Symbol("stopped");
const HAND_BACK = Symbol("hand back");

// --- the worker ------------------------------------------------------------------------------------

/** One task subject and its durable consumer, with the pull requests in flight on it. */
class Route {
  constructor(queue, priority, handler, inbox) {
    this.queue = queue;
    this.priority = priority;
    this.handler = handler;
    this.consumer = taskConsumer(queue, priority, handler);
    this.next = `$JS.API.CONSUMER.MSG.NEXT.${TASKS}.${this.consumer}`;
    this.inbox = inbox;
    this.rings = 0; // doorbells since the worker started
    this.waiter = null; // the fetch in progress
    this.late = []; // messages of a pull request answered after its fetch stopped waiting
  }
}

export class Worker {
  /**
   * @param {object} o
   * @param {string} o.url NATS server(s), comma-separated
   * @param {string[]} o.queues
   * @param {Record<string, Function>} o.handlers name -> async (ctx) => result
   */
  constructor({
    url = "nats://127.0.0.1:4222",
    queues = ["node"],
    handlers = defaultHandlers,
    concurrency = 16,
    heartbeat = 5,
    workerId = `${os.hostname()}-node-${process.pid}`,
    drainTimeout = DRAIN_TIMEOUT_MS / 1000,
  } = {}) {
    for (const q of queues) if (!TOKEN.test(q)) throw new Error(`invalid queue name ${show(q)}: use letters, digits, '_' and '-'`);
    for (const h of Object.keys(handlers)) {
      if (!HANDLER_NAME.test(h)) throw new Error(`invalid handler name ${show(h)}: use tokens joined by '.'`);
    }
    if (!(Number.isInteger(concurrency) && concurrency > 0)) throw new Error(`concurrency must be a positive integer`);
    if (!(heartbeat > 0)) throw new Error(`heartbeat must be a positive number of seconds`);
    this.url = url;
    this.queues = queues;
    this.handlers = new Map(Object.entries(handlers));
    this.concurrency = concurrency;
    this.heartbeat = heartbeat;
    this.id = workerId;
    this.drainTimeoutMs = drainTimeout * 1000;
    this.host = os.hostname();
    this.startedAt = now();
    this.handlersVersion = handlersVersion(this.handlers);

    this.routes = [];
    this.bySubject = new Map();
    this.maybe = new Set(); // routes that may hold tasks
    this.fresh = new Set(); // rang since the last sweep
    this.running = new Map(); // task message -> its promise
    this.attempts = new Map(); // task message -> {run, task, attempt, reply, started}, as the heartbeat names them
    this.controllers = new Map(); // attempt key -> AbortController of its handler
    this.interrupted = new Map(); // attempt keys interrupted, oldest first (a Map keeps insertion order)
    this.done = 0;
    this.skipped = 0;
    this.interrupts = 0;

    this.bell = new Flag();
    this.slot = new Flag();
    this.announce = new Flag();
    this.stopped = new Flag();
    this.stopping = false;
    this.leaveFlag = new Flag();
    this.leaving = false;
    this.subs = []; // the doorbells and the inbox of pull requests
    this.interruptSub = null;
    this.warned = new Map();
  }

  /** Stop taking tasks; run() returns once the running ones finished (or the drain timeout passed). */
  stop() {
    if (this.stopping) {
      // A second signal: give up waiting for the running tasks, hand them back now.
      for (const c of this.controllers.values()) if (!c.signal.aborted) c.abort(SHUTDOWN);
      return;
    }
    this.stopping = true;
    this.stopped.set();
    this.bell.set();
    this.slot.set();
  }

  /** Connect, serve until stop(), then drain and leave. */
  async run() {
    const servers = this.url.split(",").map((s) => s.trim()).filter(Boolean);
    this.nc = await connect({
      servers,
      name: `jetdag-worker-node ${this.id}`,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
      noAsyncTraces: true, // a stack captured for every request (each publish) costs a tenth of the CPU
    });
    try {
      this.jsm = await this.nc.jetstreamManager();
      this.js = this.nc.jetstream();
      await this.prepare();
      if (!this.stopping) {
        log("info", `worker ${this.id} serving ${this.queues.join(", ")} (handlers ${[...this.handlers.keys()].sort().join(", ")}, concurrency ${this.concurrency}) on ${this.url}`);
        this.beating = this.keepAlive();
        await this.loop();
      }
    } finally {
      await this.leave();
    }
  }

  async prepare() {
    // The consumers need the stream: wait for it (an engine, `jetdag up`, creates it).
    for (let said = false; !this.stopping; ) {
      try {
        await this.jsm.streams.info(TASKS);
        break;
      } catch (err) {
        if (!said) log("warning", `stream ${TASKS} not found (${err.message}): waiting for jetdag to create it`);
        said = true;
        await this.stopped.wait(1000);
      }
    }
    if (this.stopping) return;
    await this.replacePredecessor();
    const inbox = createInbox();
    for (const queue of this.queues) {
      for (const priority of PRIORITIES) {
        for (const handler of this.handlers.keys()) {
          const route = new Route(queue, priority, handler, `${inbox}.${this.routes.length}`);
          this.routes.push(route);
          this.bySubject.set(taskSubject(queue, priority, handler), route);
        }
      }
    }
    await Promise.all(this.routes.map((r) => this.ensureConsumer(r)));
    this.maybe = new Set(this.routes); // what was queued before this worker started
    // An inbox per route: a delivered task carries its own subject, not the inbox it was sent to.
    for (const route of this.routes) {
      this.subs.push(this.nc.subscribe(route.inbox, { callback: (err, msg) => err || this.onPulled(route, msg) }));
    }
    // The doorbell: core NATS sees every publish to the queue, so an idle worker wakes at once.
    for (const q of this.queues) {
      this.subs.push(this.nc.subscribe(`jd.task.${q}.>`, { callback: (err, msg) => err || this.onRing(msg) }));
    }
    this.interruptSub = this.nc.subscribe(INTERRUPT, { callback: (err, msg) => err || this.onInterrupt(msg) });
  }

  async ensureConsumer(route) {
    try {
      await this.jsm.consumers.info(TASKS, route.consumer);
      return;
    } catch (err) {
      if (!/not found/i.test(err.message)) throw err;
    }
    try {
      await this.jsm.consumers.add(TASKS, consumerConfig(route.queue, route.priority, route.handler));
    } catch (err) {
      // Another worker made it meanwhile: fine when it is there now.
      await this.jsm.consumers.info(TASKS, route.consumer).catch(() => {
        throw err;
      });
    }
  }

  /** A worker started under the id of one that died (a pod's name) fails the attempts the other said it ran,
   * for retry now, rather than after three missed beats. */
  async replacePredecessor() {
    let info;
    try {
      const kv = await this.js.views.kv(WORKERS_KV, { bindOnly: true });
      const entry = await kv.get(this.id);
      if (!entry || entry.operation !== "PUT" || !entry.value?.length) return;
      info = decode(entry.value);
    } catch {
      return; // no bucket, or not a heartbeat: nothing to take over
    }
    if (!isMap(info) || !Array.isArray(info.running)) return;
    const error = `worker ${this.id} on ${info.host || "an unknown host"} was replaced by a new worker of the same id`;
    const failed = [];
    for (const t of info.running) {
      const match = isMap(t) && typeof t.reply === "string" ? REPLY.exec(t.reply) : null;
      if (!match || match[1] !== t.run || typeof t.task !== "string" || !Number.isInteger(t.attempt)) continue;
      const event = {
        v: VERSION, k: "task.failed", run: t.run, task: t.task, attempt: t.attempt, ts: now(), worker: this.id,
        error, retryable: true, retry_delay: null,
        details: { replaced_by: `${this.host}-${process.pid}`, last_beat: info.beat ?? null, host: info.host ?? null },
      };
      failed.push(this.js.publish(t.reply, encode(event), { msgID: `${t.run}:${t.task}:${t.attempt}:reaped` }));
    }
    await Promise.allSettled(failed);
    log("warning", `${error}: failed ${failed.length} attempt(s) it ran for retry`);
  }

  // --- taking tasks --------------------------------------------------------------------------------

  onRing(msg) {
    const route = this.bySubject.get(msg.subject);
    if (route === undefined) return; // a task for another worker's handler
    route.rings += 1;
    this.maybe.add(route);
    this.fresh.add(route);
    this.bell.set();
  }

  onPulled(route, msg) {
    const status = msg.headers?.code ?? 0;
    const w = route.waiter;
    if (status > 0) {
      // 404 no messages, 408 request expired, 409 cut short; 100 is an idle heartbeat.
      if (status !== 100 && w) w.finish();
      return;
    }
    if (w && w.out.length < w.want) {
      w.out.push(msg);
      if (w.out.length >= w.want) w.finish();
      return;
    }
    route.late.push(msg); // taken by the next fetch of this route
    this.maybe.add(route);
    this.bell.set();
  }

  /** Up to `n` task messages available now on `route` (no_wait); with `lingerMs`, wait that long for the first. */
  fetch(route, n, lingerMs) {
    const out = route.late.splice(0, n);
    if (out.length >= n) return Promise.resolve(out);
    return new Promise((resolve) => {
      const w = { want: n - out.length, out: [], timer: null };
      w.finish = () => {
        if (route.waiter !== w) return;
        route.waiter = null;
        clearTimeout(w.timer);
        resolve(out.concat(w.out));
      };
      route.waiter = w;
      w.timer = setTimeout(w.finish, lingerMs + 1000);
      const request = { batch: w.want, no_wait: true };
      if (lingerMs > 0) request.expires = nanos(lingerMs);
      try {
        this.nc.publish(route.next, bytes(JSON.stringify(request)), { reply: route.inbox });
      } catch (err) {
        this.warn(`pull request failed: ${err.message}`);
        w.finish();
      }
    });
  }

  async loop() {
    while (!this.stopping) {
      const free = this.concurrency - this.running.size;
      if (free <= 0) {
        this.slot.clear();
        await this.slot.wait();
        continue;
      }
      this.bell.clear();
      if (this.nc.isClosed()) break;
      const fresh = this.fresh;
      this.fresh = new Set();
      let got = 0;
      for (const route of [...this.maybe].sort((a, b) => b.priority - a.priority)) {
        if (this.stopping) break;
        const rings = route.rings;
        const msgs = await this.fetch(route, free - got, fresh.has(route) ? LINGER_MS : 0);
        if (msgs.length < free - got && route.rings === rings) this.maybe.delete(route); // empty, nothing new
        for (const msg of msgs) {
          if (this.stopping) msg.respond(NAK); // taken while stopping: back to the queue, untried
          else this.start(msg);
        }
        got += msgs.length;
        if (got >= free) break;
      }
      if (got === 0 && !this.stopping) {
        if (!(await this.bell.wait(LOOK_EVERY_MS))) this.maybe = new Set(this.routes);
      }
    }
  }

  start(msg) {
    const settled = this.execute(msg)
      .catch((err) => log("error", `task on ${msg.subject}: ${errorText(err)}`))
      .finally(() => {
        this.running.delete(msg);
        this.attempts.delete(msg);
        this.done += 1;
        this.slot.set();
      });
    this.running.set(msg, settled);
  }

  // --- running one task ----------------------------------------------------------------------------

  async execute(msg) {
    let task;
    try {
      task = decodeTask(msg.subject, msg.data);
    } catch (err) {
      if (!(err instanceof Rejected)) throw err;
      await this.reject(msg, err.reason);
      return;
    }
    const fn = this.handlers.get(task.handler);
    if (fn === undefined) {
      // Cannot happen with a consumer per handler; as the reference worker does: back, untried.
      msg.respond(bytes(`-NAK ${JSON.stringify({ delay: nanos(HANDED_BACK_MS) })}`));
      return;
    }
    const key = attemptKey(task.run, task.task, task.attempt);
    if (this.interrupted.has(key)) {
      log("info", `task ${task.run}/${task.task}#${task.attempt}: its run was cancelled: acked without running it`);
      this.skipped += 1;
      msg.respond(ACK);
      return;
    }
    if (deliveries(msg) > 1) {
      const why = await this.superseded(task);
      if (why !== null) {
        log("info", `task ${task.run}/${task.task}#${task.attempt} delivered again but ${why}: acked without running it`);
        this.skipped += 1;
        msg.respond(ACK);
        return;
      }
    }
    const begun = now();
    this.attempts.set(msg, { run: task.run, task: task.task, attempt: task.attempt, reply: task.reply, started: begun });
    this.announce.set();
    const controller = new AbortController();
    this.controllers.set(key, controller);
    const startedTimer = setTimeout(() => {
      const event = { v: VERSION, k: "task.started", run: task.run, task: task.task, attempt: task.attempt, ts: begun, worker: this.id };
      this.publish(task, event, "started").catch((err) => log("debug", `task.started not published: ${err.message}`));
    }, STARTED_AFTER_MS);
    let outcome;
    try {
      outcome = await this.runHandler(task, fn, controller);
    } finally {
      clearTimeout(startedTimer);
      this.controllers.delete(key);
    }
    if (outcome === HAND_BACK) {
      // Shutdown past the drain timeout: hand the task back at once rather than after AckWait.
      msg.respond(NAK);
      return;
    }
    outcome.started = begun; // whether or not its task.started went out
    try {
      await this.publish(task, outcome, "result");
      msg.respond(ACK); // only now: a crash before this makes JetStream deliver the task again
    } catch (err) {
      log("warning", `task ${task.run}/${task.task}#${task.attempt}: result not published: ${err.message}`);
    }
  }

  async runHandler(task, fn, controller) {
    const { signal } = controller;
    const ctx = {
      run: task.run, workflow: task.workflow, task: task.task, attempt: task.attempt, handler: task.handler,
      payload: task.payload, params: task.params, info: task.info, job: task.job, worker: this.id, signal,
    };
    const stopped = new Promise((resolve) => signal.addEventListener("abort", () => resolve(STOPPED), { once: true }));
    const timer = task.timeout === null ? null : setTimeout(() => controller.abort(TIMED_OUT), task.timeout * 1000);
    const work = (async () => fn(ctx))();
    work.catch(() => {}); // a handler that fails after it was stopped is no unhandled rejection
    let value;
    let error;
    let threw = false;
    try {
      value = await Promise.race([work, stopped]);
    } catch (err) {
      threw = true;
      error = err;
    } finally {
      clearTimeout(timer);
    }
    const base = { v: VERSION, run: task.run, task: task.task, attempt: task.attempt, worker: this.id };
    const failed = (text, retryable, retryDelay = null, details = null) => ({
      ...base, k: "task.failed", ts: now(), error: text, retryable, retry_delay: retryDelay, details,
    });
    if (value === STOPPED || (threw && signal.aborted)) {
      if (signal.reason === INTERRUPTED) return failed(CANCELLED, false);
      if (signal.reason === TIMED_OUT) return failed(`timed out after ${task.timeout}s`, true);
      return HAND_BACK;
    }
    if (!threw) return { ...base, k: "task.succeeded", ts: now(), result: value === undefined ? null : value };
    const details = isMap(error?.details) ? error.details : null;
    if (error instanceof Retry) {
      const retryDelay = typeof error.delay === "number" && error.delay >= 0 ? error.delay : null;
      return failed(error.reason || "retry requested", true, retryDelay, details);
    }
    if (error instanceof Fail) return failed(error.message || "failed", false, null, details);
    const traceback = String(error?.stack ?? error).slice(-2000);
    return failed(errorText(error), true, null, { ...details, traceback });
  }

  /** Publish `event` to the task's reply subject through JetStream, deduped by `<run>:<task>:<attempt>:<kind>`. */
  async publish(task, event, kind) {
    let data;
    try {
      data = encode(event);
    } catch (err) {
      if (kind !== "result") throw err;
      // A result msgpack cannot carry is the handler's failure, reported as such.
      data = encode({
        v: VERSION, k: "task.failed", run: task.run, task: task.task, attempt: task.attempt, ts: now(),
        worker: this.id, error: `result of handler '${task.handler}' cannot be serialized: ${err.message}`,
        retryable: false, retry_delay: null, details: null, started: event.started,
      });
    }
    const msgID = `${task.run}:${task.task}:${task.attempt}:${kind}`;
    for (let triesLeft = 2; ; triesLeft--) {
      // A publish lost with a dying server is never answered: send it again (the same id is deduped).
      try {
        await this.js.publish(task.reply, data, { msgID, timeout: PUBLISH_TIMEOUT_MS });
        return;
      } catch (err) {
        if (triesLeft <= 0 || !isTimeout(err)) throw err;
      }
    }
  }

  /** Copy a malformed task to `jd.dlq._invalid` with the reason, then terminate it: it is never redelivered. */
  async reject(msg, reason) {
    log("warning", `${msg.subject}: ${reason}`);
    const h = natsHeaders();
    h.set("Jd-Reason", reason.replace(/[\r\n]+/g, " ").slice(0, 1000));
    h.set("Jd-Subject", msg.subject);
    try {
      await this.js.publish(INVALID_DLQ, msg.data, { headers: h, timeout: PUBLISH_TIMEOUT_MS });
    } catch (err) {
      log("error", `could not dead-letter a message from ${msg.subject}: ${err.message}`);
    }
    if (msg.reply) msg.respond(TERM);
  }

  async superseded(task) {
    try {
      this.runsKv ??= await this.js.views.kv(RUNS_KV, { bindOnly: true });
      const entry = await this.runsKv.get(task.run);
      if (!entry || entry.operation !== "PUT" || !entry.value?.length) return null;
      let value = entry.value;
      if (value[0] === 0xc1) value = inflateRawSync(value.subarray(1)); // a snapshot over 64 KiB
      return superseded(decode(value), task.task, task.attempt);
    } catch (err) {
      log("debug", `task ${task.run}/${task.task}#${task.attempt}: snapshot not readable: ${err.message}`);
      return null; // unsure: run it
    }
  }

  onInterrupt(msg) {
    let key;
    let body;
    try {
      body = decode(msg.data);
      if (!isMap(body) || typeof body.run !== "string" || typeof body.task !== "string" || !Number.isInteger(body.attempt)) {
        throw new Error("expected {v, run, task, attempt}");
      }
      key = attemptKey(body.run, body.task, body.attempt);
    } catch (err) {
      log("warning", `malformed interrupt ignored: ${err.message}`);
      return;
    }
    this.interrupted.delete(key);
    this.interrupted.set(key, true);
    while (this.interrupted.size > REMEMBERED_INTERRUPTS) this.interrupted.delete(this.interrupted.keys().next().value);
    const c = this.controllers.get(key);
    if (c !== undefined && !c.signal.aborted) {
      log("info", `interrupting ${body.run}/${body.task}#${body.attempt}: its run was cancelled`);
      this.interrupts += 1;
      c.abort(INTERRUPTED);
    }
  }

  // --- heartbeat -----------------------------------------------------------------------------------

  heartbeatInfo() {
    return {
      v: VERSION, id: this.id, host: this.host, pid: process.pid, queues: this.queues,
      handlers: [...this.handlers.keys()].sort(), handlers_version: this.handlersVersion,
      concurrency: this.concurrency, interval: this.heartbeat, started: this.startedAt, beat: now(),
      done: this.done, running: [...this.attempts.values()],
    };
  }

  /** Beat into `jd_workers` every `heartbeat` seconds (sooner after a task starts), and send in-progress acks
   * for running tasks every 10 s; until leave() (which deletes the entry after the last beat). */
  async keepAlive() {
    const interval = this.heartbeat * 1000;
    let nextProgress = mono() + PROGRESS_EVERY_MS;
    while (!this.leaving) {
      this.announce.clear();
      try {
        this.workersKv ??= await this.js.views.kv(WORKERS_KV, { bindOnly: true });
        await this.workersKv.put(this.id, encode(this.heartbeatInfo()));
      } catch (err) {
        this.warn(`heartbeat not stored: ${err.message}`);
      }
      const beatAt = mono();
      let nextBeat = beatAt + interval;
      for (let t = mono(); t < nextBeat && !this.leaving; t = mono()) {
        if (t >= nextProgress) {
          for (const msg of this.running.keys()) msg.respond(WPI);
          nextProgress = t + PROGRESS_EVERY_MS;
        }
        const until = () => Math.min(nextBeat, nextProgress) - mono();
        if (this.announce.isSet) {
          nextBeat = Math.min(nextBeat, beatAt + Math.min(PROMPT_BEAT_MS, interval));
          await this.leaveFlag.wait(until());
        } else {
          await Promise.race([this.announce.wait(until()), this.leaveFlag.wait(until())]);
        }
      }
    }
  }

  async leave() {
    for (const sub of this.subs) sub.unsubscribe();
    this.subs = [];
    for (const route of this.routes) for (const msg of route.late.splice(0)) msg.respond(NAK); // untried: back
    if (this.running.size) {
      log("info", `draining ${this.running.size} running task(s)`);
      const all = Promise.allSettled([...this.running.values()]);
      if ((await within(all, this.drainTimeoutMs, "late")) === "late") {
        for (const c of this.controllers.values()) if (!c.signal.aborted) c.abort(SHUTDOWN);
        await within(Promise.allSettled([...this.running.values()]), FAREWELL_MS);
      }
    }
    this.interruptSub?.unsubscribe(); // kept while draining: a run cancelled meanwhile stops its tasks here
    this.leaving = true; // the heartbeat went on while draining: a draining worker is not presumed dead
    this.leaveFlag.set();
    if (this.beating) await within(this.beating, PUBLISH_TIMEOUT_MS);
    if (this.workersKv) {
      await within(this.workersKv.delete(this.id).catch((err) => log("warning", `heartbeat not deleted: ${err.message}`)), FAREWELL_MS);
    }
    if (!this.nc.isClosed()) {
      await within(this.nc.drain().catch(() => {}), FAREWELL_MS);
      if (!this.nc.isClosed()) await this.nc.close();
    }
    log("info", `worker ${this.id} stopped: ${this.done} task message(s) handled`);
  }

  /** A warning, at most once a minute for the same text (a server that is down fails every beat). */
  warn(text) {
    const t = mono();
    if (t - (this.warned.get(text) ?? -Infinity) >= 60_000) {
      this.warned.set(text, t);
      log("warning", text);
    }
  }
}

function handlersVersion(handlers) {
  const digest = createHash("sha1");
  for (const name of [...handlers.keys()].sort()) digest.update(`${name}=${handlers.get(name).toString()}\n`);
  return digest.digest("hex").slice(0, 8);
}

// --- the command line ------------------------------------------------------------------------------

const USAGE = `usage: node worker.js [--nats URL] [--queue Q]... [--concurrency N] [--heartbeat S] [--worker-id ID]

A jetdag worker (wire protocol v1) with the handlers echo, fail and sleep.

  --nats URL        NATS server(s), comma-separated   env JETDAG_NATS (default nats://127.0.0.1:4222)
  --queue Q         queue(s) to serve                 env JETDAG_QUEUE, comma-separated (default node)
  --concurrency N   tasks run at once                 env JETDAG_CONCURRENCY (default 16)
  --heartbeat S     seconds between heartbeats        env JETDAG_HEARTBEAT (default 5)
  --worker-id ID    this worker's id                  env JETDAG_WORKER_ID (default <hostname>-node-<pid>)

SIGINT/SIGTERM: stop taking tasks, let running ones finish (up to 10 s), delete the heartbeat, exit 0.`;

export function options(argv = process.argv.slice(2), env = process.env) {
  const { values } = parseArgs({
    args: argv,
    options: {
      nats: { type: "string" },
      queue: { type: "string", multiple: true },
      concurrency: { type: "string" },
      heartbeat: { type: "string" },
      "worker-id": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return null;
  const number = (text, name) => {
    const n = Number(text);
    if (text === undefined || text === "" || !Number.isFinite(n)) throw new Error(`${name} must be a number, got ${show(text)}`);
    return n;
  };
  const queues = values.queue ?? (env.JETDAG_QUEUE || "node").split(",");
  return {
    url: values.nats ?? env.JETDAG_NATS ?? "nats://127.0.0.1:4222",
    queues: queues.map((q) => q.trim()).filter(Boolean),
    concurrency: number(values.concurrency ?? env.JETDAG_CONCURRENCY ?? "16", "concurrency"),
    heartbeat: number(values.heartbeat ?? env.JETDAG_HEARTBEAT ?? "5", "heartbeat"),
    workerId: values["worker-id"] ?? env.JETDAG_WORKER_ID ?? `${os.hostname()}-node-${process.pid}`,
  };
}

export async function main() {
  let worker;
  try {
    const opts = options();
    if (opts === null) {
      process.stdout.write(`${USAGE}\n`);
      return 0;
    }
    worker = new Worker(opts);
  } catch (err) {
    process.stderr.write(`jetdag-worker-node: ${err.message}\n\n${USAGE}\n`);
    return 2;
  }
  for (const sig of ["SIGINT", "SIGTERM"]) {
    process.on(sig, () => {
      log("info", `${sig}: stopping${worker.stopping ? " now" : ""}`);
      worker.stop();
    });
  }
  try {
    await worker.run();
  } catch (err) {
    log("error", errorText(err));
    return 1;
  }
  return 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = await main();
  // Nothing of ours is left running; a timer of the NATS client must not hold the exit up.
  setTimeout(() => process.exit(process.exitCode), 100).unref();
}
