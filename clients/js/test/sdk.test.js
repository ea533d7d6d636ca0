// The SDK against real server processes: two uvicorn instances on one Redis and a fresh
// PostgreSQL database (python -m harness.stack), real sockets, real signals.
import { test, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { ChatClient } from '../src/index.js'
import { startStack, waitFor } from './stack.js'
import { NodeWebSocket, api, client, nextState, sleep, wire } from './helpers.js'

const WINDOW_MS = 1500
let stack
const open = []

before(async () => {
  stack = await startStack({
    env: {
      WS_RECONNECT_WINDOW_MS: String(WINDOW_MS),
      WS_HEARTBEAT_INTERVAL_SECONDS: '2',
      RATE_LIMIT_MESSAGES: '1000/s burst 1000',
    },
  })
})
after(async () => stack?.stop())
afterEach(async () => {
  for (const c of open.splice(0)) c.close()
  for (const [name, inst] of Object.entries(stack.instances)) if (!inst.running) await stack.start(name)
})

function track(c) {
  open.push(c)
  return c
}

async function conversation(...names) {
  const ids = names.slice(1).map((n) => stack.users[n].id)
  const res = await api(stack, 'inst-a', names[0], 'POST', '/api/conversations/', { title: 't', participant_ids: ids })
  assert.equal(res.status, 201)
  return res.body.id
}

const bodies = (msgs, cid) => msgs.filter((m) => m.conversation_id === cid).map((m) => m.body)
const seqs = (msgs, cid) => msgs.filter((m) => m.conversation_id === cid).map((m) => m.seq)

test('onReset is required: no client that could loop or lose messages silently', () => {
  assert.throws(() => new ChatClient({ token: 'x' }), TypeError)
})

test('resume across instances: a client that moves from A to B gets what it missed, in order, once', async () => {
  const cid = await conversation('alice', 'bob')
  let where = 'inst-a'
  // A reconnect can reach A while it drains and hang there: the connect timeout ends that.
  const alice = track(client(stack, 'alice', () => where, { options: { maxBackoffMs: 1000, connectTimeoutMs: 3000 } }))
  alice.track(cid, 0)
  await alice.connect()
  assert.equal(alice.instanceId, 'inst-a')
  const first = await api(stack, 'inst-b', 'bob', 'POST', `/api/conversations/${cid}/messages/`, { body: 'm1' })
  await waitFor(() => alice.messages.length === 1, { what: 'm1 live' })
  let resumed = null
  alice.on('resumed', (r) => r.count && (resumed = r))
  await stack.command('stop inst-a') // SIGTERM: the server closes with 1012
  const s = await waitFor(() => alice.states.find((s) => s.state === 'reconnecting' && s.code), { what: 'the close' })
  assert.equal(s.code, 1012)
  assert.equal(s.reason, 'server_restart')
  for (let i = 2; i <= 6; i++) {
    await api(stack, 'inst-b', 'bob', 'POST', `/api/conversations/${cid}/messages/`, { body: `m${i}` })
  }
  assert.equal(alice.messages.length, 1) // A is gone and alice not yet elsewhere
  where = 'inst-b' // now the balancer sends her reconnect to B
  await waitFor(() => alice.messages.length === 6, { timeout: 20000, what: 'resumed messages' }).catch((err) => {
    throw new Error(`${err.message}: states ${JSON.stringify(alice.states)}; got ${bodies(alice.messages, cid)}`)
  })
  assert.equal(alice.instanceId, 'inst-b')
  assert.deepEqual(bodies(alice.messages, cid), ['m1', 'm2', 'm3', 'm4', 'm5', 'm6'])
  assert.deepEqual(seqs(alice.messages, cid), [1, 2, 3, 4, 5, 6])
  assert.equal(first.body.seq, 1)
  const resumeFrames = alice.log.sent.filter((f) => f.type === 'resume')
  assert.deepEqual(resumeFrames.at(-1).cursors, { [cid]: 1 })
  await waitFor(() => resumed, { what: 'resumed event' })
  assert.equal(resumed.count, 5)
  assert.equal(resumed.instanceId, 'inst-b')
})

test('gap detection: a message.new whose seq skips one triggers a resume that fills the gap', async () => {
  const cid = await conversation('alice', 'bob')
  let dropped = 0
  // A lossy path: the live frame of seq 2 never arrives.
  const w = wire({ dropIn: (f) => f.type === 'message.new' && f.message.seq === 2 && !dropped && ++dropped })
  const alice = track(client(stack, 'alice', () => 'inst-a', { wire: w }))
  alice.track(cid, 0)
  await alice.connect()
  for (let i = 1; i <= 3; i++) {
    await api(stack, 'inst-b', 'bob', 'POST', `/api/conversations/${cid}/messages/`, { body: `g${i}` })
  }
  await waitFor(() => alice.messages.length === 3, { what: 'three messages' })
  assert.equal(dropped, 1)
  assert.deepEqual(seqs(alice.messages, cid), [1, 2, 3])
  assert.ok(alice.log.sent.some((f) => f.type === 'resume' && f.cursors[cid] === 1), 'resumed from seq 1')
})

test('dedupe: every frame delivered twice still reaches the application once', async () => {
  const cid = await conversation('alice', 'bob')
  const w = wire({ dupIn: (f) => f.type === 'message.new' })
  const alice = track(client(stack, 'alice', () => 'inst-a', { wire: w }))
  alice.track(cid, 0)
  await alice.connect()
  for (let i = 1; i <= 4; i++) {
    await api(stack, 'inst-b', 'bob', 'POST', `/api/conversations/${cid}/messages/`, { body: `d${i}` })
  }
  await waitFor(() => w.log.received.filter((f) => f.type === 'message.new').length === 4, { what: 'frames' })
  await sleep(200)
  assert.deepEqual(bodies(alice.messages, cid), ['d1', 'd2', 'd3', 'd4'])
})

test('resume.truncated: past 1000 missed messages the rest is paged over HTTP, in order', async () => {
  const cid = await conversation('alice', 'bob')
  const alice = track(client(stack, 'alice', () => 'inst-a'))
  alice.track(cid, 0)
  await alice.connect()
  alice.close()
  // 1250 messages written straight to the database while alice is away.
  const bob = stack.users.bob.id
  await stack.command(
    `sql INSERT INTO chat_message (id, conversation_id, seq, sender_id, body, created_at) ` +
      `SELECT gen_random_uuid(), '${cid}', s, ${bob}, 'bulk ' || s, now() FROM generate_series(1, 1250) s; ` +
      `UPDATE chat_conversation SET last_seq = 1250, last_message_at = now() WHERE id = '${cid}'`,
  )
  const truncated = []
  alice.on('resume.truncated', (f) => truncated.push(f))
  await alice.connect()
  await waitFor(() => alice.messages.length === 1250, { timeout: 30000, what: '1250 messages' })
  const got = seqs(alice.messages, cid)
  assert.deepEqual(got, Array.from({ length: 1250 }, (_, i) => i + 1))
  assert.equal(alice.cursor(cid), 1250)
  assert.deepEqual(alice.resets, [])
})

test('outbox: sends re-sent after an instance SIGKILL arrive once each (a lost ack included)', async () => {
  const cid = await conversation('alice', 'bob')
  let where = 'inst-a'
  const lost = new Set()
  // The connection dies right after the server stored o1: neither its ack nor its echo reach
  // alice, so she cannot know it was stored and sends it again with the same client_msg_id.
  const isO1 = (f) => (f.type === 'ack' && f.message?.body === 'o1') || (f.type === 'message.new' && f.message.body === 'o1')
  const w = wire({ dropIn: (f) => isO1(f) && !lost.has(f.type) && !!lost.add(f.type) })
  const alice = track(client(stack, 'alice', () => where, { wire: w }))
  const bob = track(client(stack, 'bob', () => 'inst-b'))
  bob.track(cid, 0)
  await Promise.all([alice.connect(), bob.connect()])
  const sent = [alice.send(cid, 'o1')]
  await waitFor(() => bob.messages.length === 1, { what: 'o1 at bob' })
  await stack.freeze('inst-a') // hung: what is sent now is never read
  sent.push(alice.send(cid, 'o2'), alice.send(cid, 'o3'))
  await sleep(100)
  assert.equal(alice.pendingMessages().length, 3)
  where = 'inst-b'
  await stack.kill('inst-a') // SIGKILL: the socket dies without a close frame (1006)
  const results = await Promise.all(sent)
  assert.deepEqual(
    results.map((m) => m.body),
    ['o1', 'o2', 'o3'],
  )
  await waitFor(() => bob.messages.length === 3, { what: 'three at bob' })
  await sleep(300)
  assert.deepEqual(bodies(bob.messages, cid), ['o1', 'o2', 'o3'])
  const page = await api(stack, 'inst-b', 'bob', 'GET', `/api/conversations/${cid}/messages/`)
  assert.deepEqual(
    page.body.results.map((m) => m.body),
    ['o1', 'o2', 'o3'],
  )
  assert.equal(alice.pendingMessages().length, 0)
  assert.ok(w.log.sent.filter((f) => f.type === 'message.send' && f.body === 'o1').length >= 2, 'o1 was re-sent')
  assert.ok(w.log.sent.filter((f) => f.type === 'message.send' && f.body === 'o3').length >= 2, 'o3 was re-sent')
  assert.ok(w.log.received.some((f) => f.type === 'ack' && f.message?.body === 'o1' && f.repeat === true))
  assert.ok(alice.states.some((s) => s.state === 'reconnecting' && s.code === 1006))
})

test('outbox: a send made while offline survives a restart of the client (storage) and is sent', async () => {
  const cid = await conversation('alice', 'bob')
  const store = new Map()
  const storage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v) }
  const first = client(stack, 'alice', () => 'inst-a', { storage })
  first.send(cid, 'offline one').catch(() => {})
  await sleep(20)
  assert.equal(JSON.parse(store.get('chat-sdk:outbox')).length, 1)
  first.close()
  const second = track(client(stack, 'alice', () => 'inst-b', { storage }))
  const sent = new Promise((r) => second.on('sent', r))
  await second.connect()
  const ev = await sent
  assert.equal(ev.message.body, 'offline one')
  assert.equal(JSON.parse(store.get('chat-sdk:outbox')).length, 0)
})

test('outbox: a refused send (400) leaves the outbox and rejects; the outbox is bounded', async () => {
  const cid = await conversation('alice', 'bob')
  const alice = track(client(stack, 'alice', () => 'inst-a', { options: { outboxLimit: 2 } }))
  await alice.connect()
  await assert.rejects(alice.send(cid, ''), (e) => e.status === 400)
  assert.equal(alice.pendingMessages().length, 0)
  alice.close()
  alice.send(cid, 'a').catch(() => {})
  alice.send(cid, 'b').catch(() => {})
  await assert.rejects(alice.send(cid, 'c'), (e) => e.code === 'outbox_full')
})

test('jittered reconnect: the clients of a killed instance spread over the window, not in lockstep', async () => {
  const N = 24
  let where = 'inst-a'
  const clients = []
  for (let i = 0; i < N; i++) clients.push(track(client(stack, i % 2 ? 'carol' : 'alice', () => where)))
  await Promise.all(clients.map((c) => c.connect()))
  where = 'inst-b'
  const killedAt = performance.now()
  await stack.kill('inst-a')
  await waitFor(() => clients.every((c) => c.state === 'connected' && c.instanceId === 'inst-b'), {
    timeout: 30000,
    what: 'every client on inst-b',
  })
  // When each one opened its next socket, measured from the kill.
  const delays = clients.map((c) => c.log.opened[1] - killedAt).sort((a, b) => a - b)
  const spread = delays.at(-1) - delays[0]
  const mean = delays.reduce((a, b) => a + b, 0) / N
  const sd = Math.sqrt(delays.reduce((a, d) => a + (d - mean) ** 2, 0) / N)
  const planned = clients.map((c) => c.states.find((s) => s.state === 'reconnecting').delayMs)
  // Full jitter over [0, window]: uniform, so the spread covers most of the window and the
  // standard deviation is near window / sqrt(12); lockstep would put them all within a few ms.
  assert.ok(spread > WINDOW_MS * 0.5, `spread ${spread.toFixed(0)} ms over a ${WINDOW_MS} ms window`)
  assert.ok(sd > WINDOW_MS * 0.15, `standard deviation ${sd.toFixed(0)} ms`)
  assert.ok(planned.every((d) => d >= 0 && d <= WINDOW_MS), 'every first wait is inside the window')
  const buckets = new Map()
  for (const d of delays) buckets.set(Math.floor(d / 100), (buckets.get(Math.floor(d / 100)) || 0) + 1)
  assert.ok(Math.max(...buckets.values()) <= N / 3, 'no 100 ms slot takes a third of the clients')
})

test('dead-connection timer: a hung instance (SIGSTOP) is left after a missed pong', async () => {
  let where = 'inst-a'
  const alice = track(client(stack, 'alice', () => where, { options: { pongTimeoutMs: 2000 } }))
  await alice.connect()
  where = 'inst-b'
  await stack.freeze('inst-a')
  try {
    const s = await nextState(alice, (s) => s.state === 'reconnecting', 15000)
    assert.equal(s.reason, 'dead_connection')
    await nextState(alice, (s) => s.state === 'connected')
    assert.equal(alice.instanceId, 'inst-b')
    assert.ok(alice.log.sent.some((f) => f.type === 'ping'))
  } finally {
    await stack.thaw('inst-a')
  }
})

test('presence snapshot then versioned events; typing with expiry; read receipts', async () => {
  const cid = await conversation('alice', 'bob')
  const alice = track(client(stack, 'alice', () => 'inst-a', { options: { typingExpiryMs: 500 } }))
  const bob = track(client(stack, 'bob', () => 'inst-b'))
  await bob.connect()
  const snapshot = new Promise((r) => alice.on('presence.snapshot', r))
  await alice.connect()
  const snap = await snapshot
  const bobId = stack.users.bob.id
  assert.ok(snap.some((p) => p.user_id === bobId))
  await waitFor(() => alice.presence.get(bobId)?.online, { what: 'bob online' })
  const before = alice.presence.get(bobId).version
  await bob.setStatus('busy', 'in a meeting')
  await waitFor(() => alice.presence.get(bobId)?.status === 'busy', { what: 'busy' })
  assert.equal(alice.presence.get(bobId).text, 'in a meeting')
  assert.ok(alice.presence.get(bobId).version > before)
  // A stale event (lower version) arriving late is dropped.
  alice._frame(JSON.stringify({ ...alice.presence.get(bobId), type: 'presence', status: 'away', version: before }))
  assert.equal(alice.presence.get(bobId).status, 'busy')

  const typing = []
  alice.on('typing', (t) => typing.push(t.userIds))
  bob.typing(cid, true)
  await waitFor(() => alice.typingUsers(cid).includes(bobId), { what: 'bob typing' })
  await waitFor(() => alice.typingUsers(cid).length === 0, { what: 'typing expired' })
  assert.deepEqual(typing.at(-1), [])

  const m = await alice.send(cid, 'read me')
  await alice.loadReceipts(cid)
  assert.deepEqual(alice.seenBy(cid, m.seq), [])
  const read = new Promise((r) => alice.on('read', r))
  await bob.markRead(cid, m.seq)
  const ev = await read
  assert.equal(ev.userId, bobId)
  assert.deepEqual(alice.seenBy(cid, m.seq), [bobId])
})

test('close 4401: the application is asked for new credentials; without any, the client stops', async () => {
  let asked = 0
  const good = stack.users.alice.token
  const c = track(
    new ChatClient({
      url: stack.instances['inst-a'].ws_url,
      baseUrl: stack.instances['inst-a'].url,
      token: 'not-a-token',
      WebSocket: NodeWebSocket,
      onReset() {},
      onAuthError: async () => (asked++, good),
    }),
  )
  await c.connect()
  assert.equal(asked, 1)
  assert.equal(c.user.username, 'alice')
  const d = track(new ChatClient({ url: stack.instances['inst-a'].ws_url, token: 'bad', WebSocket: NodeWebSocket, onReset() {} }))
  await assert.rejects(d.connect(), (e) => e.code === 'unauthorized')
  assert.equal(d.state, 'closed')
})

test('close 4000 (operator) and 4403 (deactivated) stop the client: no reconnect', async () => {
  const carol = track(client(stack, 'carol', () => 'inst-a'))
  await carol.connect()
  const closed = nextState(carol, (s) => s.state === 'closed')
  const res = await api(stack, 'inst-b', 'admin', 'POST', `/api/admin/users/${stack.users.carol.id}/disconnect/`)
  assert.equal(res.status, 202)
  const s = await closed
  assert.equal(s.code, 4000)
  assert.equal(s.reason, 'disconnected_by_operator')
  await sleep(WINDOW_MS + 300)
  assert.equal(carol.log.opened.length, 1, 'no reconnect after 4000')

  await stack.command(`sql UPDATE auth_user SET is_active = false WHERE username = 'carol'`)
  try {
    const again = track(client(stack, 'carol', () => 'inst-a'))
    await assert.rejects(again.connect(), (e) => e.code === 'deactivated')
    await sleep(WINDOW_MS + 300)
    assert.equal(again.log.opened.length, 1, 'no reconnect after 4403')
  } finally {
    await stack.command(`sql UPDATE auth_user SET is_active = true WHERE username = 'carol'`)
  }
})

test('close codes 1006, 1011, 1012, 4008 reconnect (jittered); 4000 and 4403 stop', async (t) => {
  const { spawn } = await import('node:child_process')
  const { createInterface } = await import('node:readline')
  const python = process.env.VIRTUAL_ENV ? `${process.env.VIRTUAL_ENV}/bin/python` : 'python3'
  const proc = spawn(python, [new URL('./closer.py', import.meta.url).pathname], { stdio: ['pipe', 'pipe', 'inherit'] })
  t.after(() => proc.stdin.end())
  const port = await new Promise((r) => createInterface({ input: proc.stdout }).once('line', r))
  for (const [code, expect] of [
    [1006, 'reconnect'],
    [1011, 'reconnect'],
    [1012, 'reconnect'],
    [4008, 'reconnect'],
    [4000, 'stop'],
    [4403, 'stop'],
  ]) {
    const w = wire()
    const c = new ChatClient({ url: `ws://127.0.0.1:${port}/${code}`, token: 't', WebSocket: w.WebSocket, onReset() {} })
    const states = []
    c.on('state', (s) => states.push(s))
    await c.connect()
    if (expect === 'reconnect') {
      await waitFor(() => w.log.opened.length >= 2, { what: `a reconnect after ${code}` })
      const r = states.find((s) => s.state === 'reconnecting')
      assert.equal(r.code, code)
      assert.ok(r.delayMs >= 0 && r.delayMs <= 200, `${code}: waited ${r.delayMs} ms within the hello's window`)
    } else {
      await waitFor(() => c.state === 'closed', { what: `closed after ${code}` })
      await sleep(400)
      assert.equal(w.log.opened.length, 1, `${code}: no reconnect`)
    }
    c.close()
  }
})

test('the SDK stays under 10 KB gzipped', async () => {
  const { readFileSync } = await import('node:fs')
  const { gzipSync } = await import('node:zlib')
  const size = gzipSync(readFileSync(new URL('../src/index.js', import.meta.url)), { level: 9 }).length
  assert.ok(size < 10 * 1024, `${size} bytes gzipped`)
})

/** The interfaces of index.d.ts: name -> {type literal, fields: {name: required}}. */
async function declarations() {
  const { readFileSync } = await import('node:fs')
  const src = readFileSync(new URL('../src/index.d.ts', import.meta.url), 'utf8')
  const found = {}
  for (const m of src.matchAll(/export interface (\w+)(?: extends (\w+))? \{([^}]*)\}/g)) {
    const fields = {}
    for (const f of m[3].matchAll(/^ {2}(\w+)(\?)?:/gm)) fields[f[1]] = !f[2]
    found[m[1]] = { ext: m[2], fields, type: m[3].match(/type: '([\w.]+)'/)?.[1], open: m[3].includes('[field: string]') }
  }
  for (const d of Object.values(found)) if (d.ext) Object.assign(d.fields, found[d.ext].fields)
  return found
}

function checkShape(name, decl, value) {
  const keys = Object.keys(value)
  for (const [field, required] of Object.entries(decl.fields)) {
    if (required) assert.ok(field in value, `${name}: the server's frame lacks ${field}`)
  }
  if (!decl.open) for (const k of keys) assert.ok(k in decl.fields, `${name}: ${k} is not declared`)
}

test('the declarations match the frames the server really sends', async () => {
  const decls = await declarations()
  const byType = Object.fromEntries(Object.entries(decls).filter(([, d]) => d.type).map(([n, d]) => [d.type, [n, d]]))
  const cid = await conversation('alice', 'bob')
  const alice = track(client(stack, 'alice', () => 'inst-a'))
  const bob = track(client(stack, 'bob', () => 'inst-b'))
  await Promise.all([alice.connect(), bob.connect()])
  const m = await bob.send(cid, 'shape')
  bob.typing(cid, true)
  await bob.markRead(cid, m.seq)
  await bob.setStatus('away', 'back soon')
  bob.request({ type: 'ping' }).catch(() => {})
  await waitFor(() => ['message.new', 'typing', 'read', 'presence'].every((t) => alice.log.received.some((f) => f.type === t)), {
    what: 'every kind of frame',
  })
  const frames = [...alice.log.received, ...bob.log.received]
  const seen = new Set()
  for (const f of frames) {
    const entry = byType[f.type]
    assert.ok(entry, `frame type ${f.type} is not declared`)
    checkShape(entry[0], entry[1], f)
    if (f.message) checkShape('Message', decls.Message, f.message)
    if (f.user) checkShape('User', decls.User, f.user)
    seen.add(f.type)
  }
  for (const t of ['hello', 'ack', 'message.new', 'typing', 'read', 'presence']) assert.ok(seen.has(t), `saw ${t}`)
})
