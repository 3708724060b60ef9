#!/usr/bin/env node
// A STAN peer built on the official Node client (node-nats-streaming), for
// stanfleet's wire-compatibility tests.
//
// Usage:
//   node peer.js --url nats://127.0.0.1:4222 --cluster test-cluster --client c1 \
//       [--ping-interval MS] [--ping-max-out N] [--connect-timeout MS] [--ack-timeout MS] \
//       [--creds FILE --ca PEM] [--do JSON]...
//
// Once connected, the peer runs the --do commands in order, then the commands
// read from stdin (one JSON object per line). A command finishes before the
// next one starts: publish at its PubAck, subscribe when the subscription is
// ready, unsubscribe/close_sub at the server's answer, so a script never races
// itself. End of stdin closes the connection.
//
// Commands:
//   {"op":"publish","channel":C,"data":STR|"b64":B64,"id":TAG}    -> puback
//   {"op":"publish_batch","channel":C,"count":N,"prefix":P}
//        N publishes back to back, data P0..P(N-1), without waiting for
//        PubAcks in between                         -> puback each, then batch_done
//   {"op":"subscribe","sub":ID,"channel":C,"queue":Q,"durable":D,
//    "start":"new|all|last|seq|delta","seq":N,"delta_ms":N,
//    "manual":BOOL,"ack_wait_ms":N,"max_in_flight":N}             -> ready | sub_error
//   {"op":"ack","sub":ID,"seq":N}      ack a message received in manual-ack mode
//   {"op":"unsubscribe","sub":ID}      -> unsubscribed | sub_error
//   {"op":"close_sub","sub":ID}        -> sub_closed | sub_error
//   {"op":"close"}                     -> closed
//   {"op":"crash"}                     exit at once, without a word to the server
//
// Every event is one JSON line on stdout with an "event" field: connected,
// puback, ready, msg, acked, unsubscribed, sub_closed, sub_error, error,
// connection_lost, disconnect, reconnecting, reconnect, closed, bad_command.
'use strict'

const readline = require('readline')
const stan = require('node-nats-streaming')

function parseArgs (argv) {
  const opts = { do: [] }
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '')
    const value = argv[i + 1]
    if (value === undefined) throw new Error(`missing value for ${argv[i]}`)
    if (key === 'do') opts.do.push(value)
    else opts[key] = value
  }
  for (const required of ['url', 'cluster', 'client']) {
    if (!opts[required]) throw new Error(`--${required} is required`)
  }
  return opts
}

function emit (event, fields) {
  // stdout is a pipe: writes are synchronous on Linux, so nothing is lost on exit.
  process.stdout.write(JSON.stringify(Object.assign({ event }, fields)) + '\n')
}

function errText (err) {
  if (err === undefined || err === null || err === '') return ''
  if (typeof err === 'string') return err
  return err.message || String(err)
}

const args = parseArgs(process.argv.slice(2))
const connectOpts = { url: args.url, maxReconnectAttempts: 0, reconnect: false }
if (args['ping-interval']) connectOpts.stanPingInterval = Number(args['ping-interval'])
if (args['ping-max-out']) connectOpts.stanMaxPingOut = Number(args['ping-max-out'])
if (args['connect-timeout']) connectOpts.connectTimeout = Number(args['connect-timeout'])
if (args['ack-timeout']) connectOpts.ackTimeout = Number(args['ack-timeout'])
// A secured server: user and password (from a credentials file) and the CA.
if (args.creds) {
  const creds = JSON.parse(require('fs').readFileSync(args.creds))
  connectOpts.user = creds.user
  connectOpts.pass = creds.password
}
if (args.ca) connectOpts.tls = { ca: [require('fs').readFileSync(args.ca)] }

const sc = stan.connect(args.cluster, args.client, connectOpts)
const subs = {} // sub id -> { sub, pending: Map(seq -> Message) }
const queue = [] // commands waiting to run
let running = false
let connected = false
let closed = false

sc.on('connect', () => {
  connected = true
  emit('connected', { client: args.client })
  for (const text of args.do) enqueue(text)
  pump()
})
sc.on('error', (err) => emit('error', { error: errText(err) }))
sc.on('connection_lost', (err) => emit('connection_lost', { error: errText(err) }))
sc.on('disconnect', () => emit('disconnect', {}))
sc.on('reconnecting', () => emit('reconnecting', {}))
sc.on('reconnect', () => emit('reconnect', {}))
sc.on('close', (err) => {
  if (closed) return // the client may report a close twice
  closed = true
  emit('closed', { error: errText(err) })
  process.exit(0)
})

function enqueue (text) {
  let cmd
  try {
    cmd = JSON.parse(text)
  } catch (e) {
    emit('bad_command', { error: e.message, text })
    return
  }
  queue.push(cmd)
}

async function pump () {
  if (running || !connected) return
  running = true
  while (queue.length > 0) {
    const cmd = queue.shift()
    try {
      await run(cmd)
    } catch (e) {
      emit('bad_command', { error: e.message, op: cmd.op })
    }
  }
  running = false
}

function run (cmd) {
  switch (cmd.op) {
    case 'publish': return publish(cmd)
    case 'publish_batch': return publishBatch(cmd)
    case 'subscribe': return subscribe(cmd)
    case 'ack': return ack(cmd)
    case 'unsubscribe': return endSub(cmd, false)
    case 'close_sub': return endSub(cmd, true)
    case 'close': return new Promise(() => sc.close()) // 'closed' exits the process
    case 'crash': return process.exit(0)
    default: throw new Error(`unknown op ${cmd.op}`)
  }
}

function publish (cmd) {
  const data = cmd.b64 !== undefined ? Buffer.from(cmd.b64, 'base64') : (cmd.data || '')
  return new Promise((resolve) => {
    sc.publish(cmd.channel, data, (err, guid) => {
      emit('puback', { id: cmd.id, channel: cmd.channel, guid, error: errText(err) })
      resolve()
    })
  })
}

function publishBatch (cmd) {
  return new Promise((resolve) => {
    let pending = cmd.count
    let errors = 0
    for (let i = 0; i < cmd.count; i++) {
      const id = `${cmd.prefix}${i}`
      sc.publish(cmd.channel, id, (err, guid) => {
        if (err) errors++
        emit('puback', { id, channel: cmd.channel, guid, error: errText(err) })
        if (--pending === 0) {
          emit('batch_done', { channel: cmd.channel, count: cmd.count, errors })
          resolve()
        }
      })
    }
  })
}

function subscriptionOptions (cmd) {
  const opts = sc.subscriptionOptions()
  switch (cmd.start || 'new') {
    case 'new': break
    case 'all': opts.setDeliverAllAvailable(); break
    case 'last': opts.setStartWithLastReceived(); break
    case 'seq': opts.setStartAtSequence(cmd.seq); break
    case 'delta': opts.setStartAtTimeDelta(cmd.delta_ms); break
    default: throw new Error(`unknown start ${cmd.start}`)
  }
  if (cmd.durable) opts.setDurableName(cmd.durable)
  if (cmd.manual) opts.setManualAckMode(true)
  if (cmd.ack_wait_ms) opts.setAckWait(cmd.ack_wait_ms)
  if (cmd.max_in_flight) opts.setMaxInFlight(cmd.max_in_flight)
  return opts
}

function subscribe (cmd) {
  const id = cmd.sub
  const opts = subscriptionOptions(cmd)
  const sub = cmd.queue ? sc.subscribe(cmd.channel, cmd.queue, opts) : sc.subscribe(cmd.channel, opts)
  const entry = { sub, pending: new Map() }
  subs[id] = entry
  sub.on('message', (m) => {
    if (cmd.manual) entry.pending.set(m.getSequence(), m)
    emit('msg', {
      sub: id,
      channel: m.getSubject(),
      seq: m.getSequence(),
      data: m.getRawData().toString('utf8'),
      b64: m.getRawData().toString('base64'),
      redelivered: m.isRedelivered(),
      redelivery_count: m.getRedeliveryCount(),
      timestamp_ms: Math.floor(m.getTimestampRaw() / 1e6)
    })
  })
  return new Promise((resolve) => {
    sub.on('ready', () => {
      emit('ready', { sub: id, channel: cmd.channel })
      resolve()
    })
    sub.on('error', (err) => {
      emit('sub_error', { sub: id, error: errText(err) })
      resolve()
    })
    sub.on('timeout', (err) => {
      emit('sub_error', { sub: id, error: errText(err) })
      resolve()
    })
  })
}

function ack (cmd) {
  const entry = subs[cmd.sub]
  const m = entry && entry.pending.get(cmd.seq)
  if (!m) throw new Error(`no unacked message seq=${cmd.seq} on sub ${cmd.sub}`)
  entry.pending.delete(cmd.seq)
  m.ack()
  emit('acked', { sub: cmd.sub, seq: cmd.seq })
}

function endSub (cmd, close) {
  const entry = subs[cmd.sub]
  if (!entry) throw new Error(`unknown sub ${cmd.sub}`)
  delete subs[cmd.sub]
  return new Promise((resolve) => {
    const done = close ? 'sub_closed' : 'unsubscribed'
    entry.sub.removeAllListeners('error')
    entry.sub.removeAllListeners('timeout')
    entry.sub.on(close ? 'closed' : 'unsubscribed', () => {
      emit(done, { sub: cmd.sub })
      resolve()
    })
    entry.sub.on('error', (err) => {
      emit('sub_error', { sub: cmd.sub, error: errText(err) })
      resolve()
    })
    entry.sub.on('timeout', (err) => {
      emit('sub_error', { sub: cmd.sub, error: errText(err) })
      resolve()
    })
    if (close) entry.sub.close()
    else entry.sub.unsubscribe()
  })
}

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', (line) => {
  if (line.trim() === '') return
  enqueue(line)
  pump()
})
rl.on('close', () => {
  // The test is done with us: leave politely if still connected.
  if (!closed && connected) sc.close()
  else if (!connected) process.exit(0)
})
