// Chat client SDK: one WebSocket per device carrying every conversation of the user.
// Dependency-free ES module; runs in browsers and in Node 20+ (pass a WebSocket constructor,
// or run Node with --experimental-websocket). Protocol: docs/protocol in the server repository.

export const STATES = Object.freeze(['idle', 'connecting', 'connected', 'reconnecting', 'closed'])

// Close codes: what the server means by each and what the client does about it.
const STOP = { 4403: 'deactivated', 4000: 'disconnected_by_operator' }
const RECONNECT = {
  1006: 'abnormal',
  1011: 'fanout_lost',
  1012: 'server_restart',
  4008: 'slow_consumer',
  1001: 'going_away',
  1008: 'policy',
  1009: 'too_big',
}
const DEFAULTS = {
  reconnectWindowMs: 10000, // used until a hello names the server's window
  maxBackoffMs: 30000,
  ackTimeoutMs: 10000,
  outboxLimit: 100,
  maxFill: 5000, // messages paged over HTTP after a truncated resume before giving up (onReset)
  pongTimeoutMs: 10000,
  connectTimeoutMs: 10000, // from opening the socket to its hello
  typingExpiryMs: 10000,
  typingRepeatMs: 7000,
  storageKey: 'chat-sdk',
  dedupeWindow: 5000,
}

export class ChatError extends Error {
  constructor(body) {
    super(body.detail || body.code || 'error')
    this.name = 'ChatError'
    Object.assign(this, body)
  }
}

const memoryStorage = () => {
  const m = new Map()
  return { getItem: (k) => (m.has(k) ? m.get(k) : null), setItem: (k, v) => void m.set(k, v), removeItem: (k) => void m.delete(k) }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const newId = () =>
  globalThis.crypto?.randomUUID ? globalThis.crypto.randomUUID() : `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`

function cookie(name) {
  const doc = globalThis.document
  if (!doc?.cookie) return ''
  for (const part of doc.cookie.split(';')) {
    const [k, ...v] = part.trim().split('=')
    if (k === name) return decodeURIComponent(v.join('='))
  }
  return ''
}

export class ChatClient {
  /**
   * @param {import('./index').ChatClientOptions} options
   */
  constructor(options = {}) {
    if (typeof options.onReset !== 'function') {
      // Without it a client that cannot fill a gap would either loop or lose messages silently.
      throw new TypeError('ChatClient: options.onReset(info) is required (called when history must be reloaded)')
    }
    this.o = { ...DEFAULTS, ...options }
    const loc = globalThis.location
    // Either may be a function, asked before every connect (a client-side balancer).
    this.baseUrl = options.baseUrl ?? (loc ? loc.origin : '')
    this.url = options.url || (() => this._base().replace(/^http/, 'ws') + '/ws/chat/')
    this.WS = options.WebSocket || globalThis.WebSocket
    this.fetch = options.fetch || globalThis.fetch?.bind(globalThis)
    this.storage = options.storage || globalThis.localStorage || memoryStorage()
    this.random = options.random || Math.random
    this.token = options.token
    this.auth = options.token ? 'token' : 'session'
    // Browsers cannot set handshake headers: there the token buys a ticket over HTTP first.
    this.tokenHeader = options.tokenInHeader ?? !globalThis.document
    this.state = 'idle'
    this.instanceId = null
    this.user = null
    this.window = this.o.reconnectWindowMs
    this.heartbeatMs = 25000
    this.cursors = new Map() // conversation id -> last seq delivered in order
    this.maxSeen = new Map() // conversation id -> highest seq seen (gap detection)
    this.seenIds = new Set()
    this.filling = new Set()
    this.resuming = false
    this.presence = new Map()
    this.typers = new Map() // conversation id -> Map(user id -> timer)
    this.receipts = new Map() // conversation id -> Map(user id -> seq)
    this.outbox = []
    this.pending = new Map() // frame id -> {resolve, reject, timer}
    this.sends = new Map() // client_msg_id -> {resolve, reject}
    this.listeners = new Map()
    this.attempt = 0
    this.authFailures = 0
    this.lastTypingAt = new Map()
    this._onWake = () => this.wake()
    this._onVisible = () => globalThis.document?.visibilityState === 'visible' && this.wake()
    this.loaded = this._loadOutbox()
  }

  // --- events ----------------------------------------------------------------------------------

  /** Subscribe to an event; returns the function that unsubscribes. */
  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set())
    this.listeners.get(event).add(fn)
    return () => this.listeners.get(event)?.delete(fn)
  }

  emit(event, data) {
    for (const fn of this.listeners.get(event) || []) {
      try {
        fn(data)
      } catch (err) {
        if (event !== 'error') this.emit('error', err)
      }
    }
  }

  _setState(state, extra = {}) {
    this.state = state
    this.emit('state', { state, instanceId: this.instanceId, reason: null, code: null, ...extra })
  }

  // --- connection ------------------------------------------------------------------------------

  /** Open the socket (and keep it open until close()). Resolves once connected. */
  connect() {
    if (this.state === 'closed' || this.state === 'idle') {
      this.stopped = false
      const win = globalThis.window
      if (win?.addEventListener) {
        win.addEventListener('online', this._onWake)
        globalThis.document?.addEventListener?.('visibilitychange', this._onVisible)
      }
      this._open('connecting')
    }
    return new Promise((resolve, reject) => {
      if (this.state === 'connected') return resolve(this.hello)
      const off = this.on('state', (s) => {
        if (s.state === 'connected') off(), resolve(this.hello)
        else if (s.state === 'closed') off(), reject(new ChatError({ code: s.reason, detail: `closed: ${s.reason}` }))
      })
    })
  }

  /** Close for good (no reconnect). The outbox is kept for the next connect(). */
  close(reason = 'client_closed') {
    this.stopped = true
    clearTimeout(this.retryTimer)
    const win = globalThis.window
    win?.removeEventListener?.('online', this._onWake)
    globalThis.document?.removeEventListener?.('visibilitychange', this._onVisible)
    this._teardown(1000)
    this._failPending(new ChatError({ code: 'closed', detail: 'client closed' }))
    if (this.state !== 'closed') this._setState('closed', { reason })
  }

  /** Reconnect now if waiting to (the network came back, the page became visible). */
  wake() {
    if (this.state === 'reconnecting' && this.retryTimer) {
      clearTimeout(this.retryTimer)
      this.retryTimer = null
      this._open('reconnecting')
    } else if (this.state === 'connected') {
      this._ping() // a socket that died while the page slept is found out now
    }
  }

  _base() {
    return (typeof this.baseUrl === 'function' ? this.baseUrl() : this.baseUrl).replace(/\/$/, '')
  }

  async _url() {
    const url = typeof this.url === 'function' ? this.url() : this.url
    if (this.auth === 'token' && this.tokenHeader) return url
    // A single-use ticket, fetched with the session and its CSRF token (browser) or the token.
    const res = await this.http('POST', '/api/auth/ws-ticket/')
    return `${url}${url.includes('?') ? '&' : '?'}ticket=${encodeURIComponent(res.ticket)}`
  }

  async _open(phase) {
    this._setState(phase, { attempt: this.attempt })
    const gen = (this.gen = (this.gen || 0) + 1)
    let url
    try {
      await this.loaded
      url = await this._url()
    } catch (err) {
      if (gen !== this.gen || this.stopped) return
      if (err.status === 401 || err.status === 403) return this._unauthorized(4401)
      return this._retry({ reason: 'ticket_failed', retryAfterMs: (err.retry_after || 0) * 1000 })
    }
    if (gen !== this.gen || this.stopped) return
    let ws
    try {
      if (this.auth === 'token' && this.tokenHeader) {
        const token = typeof this.token === 'function' ? await this.token() : this.token
        ws = new this.WS(url, { headers: { Authorization: `Token ${token}` } })
      } else {
        ws = new this.WS(url)
      }
    } catch (err) {
      return this._retry({ reason: 'connect_failed' })
    }
    this.ws = ws
    this.opened = false
    // A handshake that never completes (a hung or draining instance) is given up and retried.
    this.connectTimer = setTimeout(() => gen === this.gen && this._closed(1006, 'connect_timeout', true), this.o.connectTimeoutMs)
    ws.onmessage = (ev) => gen === this.gen && this._frame(ev.data)
    ws.onclose = (ev) => gen === this.gen && this._closed(ev.code, ev.reason)
    ws.onerror = () => {}
    ws.onopen = () => {
      this.opened = true
    }
  }

  _teardown(code) {
    this.gen = (this.gen || 0) + 1 // late events of the old socket are ignored
    clearTimeout(this.connectTimer)
    clearTimeout(this.pingTimer)
    clearTimeout(this.pongTimer)
    const ws = this.ws
    this.ws = null
    this.resuming = false
    this.filling.clear()
    if (ws && ws.readyState <= 1) {
      try {
        ws.close(code)
      } catch {
        ws.close()
      }
    }
    for (const [cid, m] of this.typers) {
      for (const t of m.values()) clearTimeout(t)
      if (m.size) this.emit('typing', { conversationId: cid, userIds: [] })
    }
    this.typers.clear()
  }

  _closed(code, reason, local = false) {
    this._teardown(1000)
    this._rejectRequests(new ChatError({ code: 'disconnected', detail: `socket closed (${code})` }))
    if (this.stopped) return
    if (STOP[code]) return this._stop(STOP[code], code)
    if (code === 4401) return this._unauthorized(code)
    this._retry({ reason: (local && reason) || RECONNECT[code] || reason || `closed_${code}`, code })
  }

  _unauthorized(code) {
    // Ask the application for new credentials, at most a few times in a row.
    if (++this.authFailures > 3) return this._stop('unauthorized', code)
    if (this.auth === 'session') return this._retry({ reason: 'unauthorized', code, immediate: true })
    const ask = this.o.onAuthError
    if (!ask) return this._stop('unauthorized', code)
    this._setState('reconnecting', { reason: 'unauthorized', code })
    Promise.resolve()
      .then(ask)
      .then(
        (token) => {
          if (this.stopped) return
          if (!token) return this._stop('unauthorized', code)
          this.token = token
          this._open('reconnecting')
        },
        () => this._stop('unauthorized', code),
      )
  }

  _stop(reason, code) {
    this.stopped = true
    this._failPending(new ChatError({ code: reason, detail: `closed: ${reason}` }))
    this._setState('closed', { reason, code })
  }

  /** Full jitter: a random wait in [0, min(cap, window * 2^attempt)], at least Retry-After. */
  _retry({ reason, code = null, retryAfterMs = 0, immediate = false }) {
    const ceiling = Math.min(this.o.maxBackoffMs, this.window * 2 ** Math.min(this.attempt, 16))
    const delayMs = immediate ? 0 : Math.max(retryAfterMs, Math.floor(this.random() * ceiling))
    this.attempt++
    this._setState('reconnecting', { reason, code, attempt: this.attempt, delayMs })
    clearTimeout(this.retryTimer)
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null
      if (!this.stopped) this._open('reconnecting')
    }, delayMs)
  }

  // --- incoming frames -------------------------------------------------------------------------

  _frame(raw) {
    let f
    try {
      f = JSON.parse(raw)
    } catch {
      return
    }
    this._alive()
    const handler = this[`on:${f.type}`]
    if (handler) handler.call(this, f)
    else this.emit(f.type, f)
  }

  ['on:hello'](f) {
    clearTimeout(this.connectTimer)
    this.hello = f
    this.instanceId = f.instance_id
    this.user = f.user
    if (Number.isFinite(f.reconnect_window_ms)) this.window = f.reconnect_window_ms
    if (f.heartbeat_interval > 0) this.heartbeatMs = f.heartbeat_interval * 1000
    const reconnected = this.attempt > 0 || this.everConnected
    this.attempt = 0
    this.authFailures = 0
    this.everConnected = true
    this._setState('connected', { reason: reconnected ? 'reconnected' : 'connected' })
    this.emit('hello', f)
    this._schedulePing()
    this._syncPresence()
    if (reconnected) this._refreshReceipts()
    this._resume().then(() => this.ws && this._flushOutbox())
  }

  ['on:ack'](f) {
    const p = this.pending.get(f.id)
    if (p) {
      this.pending.delete(f.id)
      clearTimeout(p.timer)
      p.resolve(f)
    }
  }

  ['on:error'](f) {
    const p = f.id && this.pending.get(f.id)
    if (p) {
      this.pending.delete(f.id)
      clearTimeout(p.timer)
      p.reject(new ChatError(f))
    } else this.emit('error', new ChatError(f))
  }

  ['on:pong']() {}

  ['on:message.new'](f) {
    this._ingest(f.message, false)
  }

  ['on:resume.truncated'](f) {
    this._fill(f.conversation_id)
  }

  ['on:presence'](f) {
    this._presence(f)
  }

  ['on:typing'](f) {
    if (this.user && f.user_id === this.user.id) return
    const cid = f.conversation_id
    if (!this.typers.has(cid)) this.typers.set(cid, new Map())
    const m = this.typers.get(cid)
    clearTimeout(m.get(f.user_id))
    if (f.state === 'start') m.set(f.user_id, setTimeout(() => this._untype(cid, f.user_id), this.o.typingExpiryMs))
    else m.delete(f.user_id)
    this.emit('typing', { conversationId: cid, userIds: [...m.keys()] })
  }

  ['on:read'](f) {
    const cid = f.conversation_id
    if (!this.receipts.has(cid)) this.receipts.set(cid, new Map())
    const m = this.receipts.get(cid)
    if ((m.get(f.user_id) || 0) < f.seq) m.set(f.user_id, f.seq)
    this.emit('read', { conversationId: cid, userId: f.user_id, seq: f.seq, readAt: f.read_at })
  }

  ['on:conversation.joined'](f) {
    // Followed from its newest message; older ones are history (HTTP). One sent meanwhile
    // shows up as a gap and is resumed.
    const c = f.conversation
    this.track(c.id, c.last_seq)
    this.emit('conversation.joined', c)
  }

  ['on:conversation.left'](f) {
    this.untrack(f.conversation_id)
    this.emit('conversation.left', f)
  }

  _untype(cid, uid) {
    const m = this.typers.get(cid)
    if (m?.delete(uid)) this.emit('typing', { conversationId: cid, userIds: [...m.keys()] })
  }

  // --- heartbeat -------------------------------------------------------------------------------

  _alive() {
    clearTimeout(this.pongTimer)
    this.pongTimer = null
  }

  _schedulePing() {
    clearTimeout(this.pingTimer)
    this.pingTimer = setTimeout(() => this._ping(), this.heartbeatMs)
  }

  _ping() {
    if (!this.ws || this.state !== 'connected') return
    this._send({ type: 'ping' })
    this._schedulePing()
    if (this.pongTimer) return
    // Dead-connection timer: no frame at all within the timeout after a ping.
    const timeout = this.o.pongTimeoutMs
    this.pongTimer = setTimeout(() => {
      this.pongTimer = null
      if (this.state === 'connected') this._closed(1006, 'dead_connection', true)
    }, timeout)
  }

  // --- requests --------------------------------------------------------------------------------

  _send(frame) {
    if (!this.ws || this.ws.readyState !== 1) return false
    this.ws.send(JSON.stringify(frame))
    return true
  }

  /** Send a frame with an id and wait for its ack (resolves) or error (rejects). */
  request(frame, timeoutMs = this.o.ackTimeoutMs) {
    const id = frame.id || newId().slice(0, 36)
    return new Promise((resolve, reject) => {
      if (!this._send({ ...frame, id })) return reject(new ChatError({ code: 'disconnected', detail: 'not connected' }))
      const timer = setTimeout(() => {
        this.pending.delete(id)
        reject(new ChatError({ code: 'ack_timeout', detail: `no answer to ${frame.type} in ${timeoutMs} ms` }))
      }, timeoutMs)
      this.pending.set(id, { resolve, reject, timer })
    })
  }

  _rejectRequests(err) {
    for (const p of this.pending.values()) clearTimeout(p.timer), p.reject(err)
    this.pending.clear()
  }

  _failPending(err) {
    this._rejectRequests(err)
  }

  /** An HTTP call to the API: the token, or the session with its CSRF token. */
  async http(method, path, body) {
    const headers = { Accept: 'application/json' }
    if (body !== undefined) headers['Content-Type'] = 'application/json'
    if (this.auth === 'token') {
      headers.Authorization = `Token ${typeof this.token === 'function' ? await this.token() : this.token}`
    } else if (method !== 'GET') {
      headers['X-CSRFToken'] = this.o.csrfToken || cookie('csrftoken')
    }
    const res = await this.fetch(this._base() + path, {
      method,
      headers,
      credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    })
    const data = res.status === 204 ? null : await res.json().catch(() => null)
    if (!res.ok) {
      const retry = Number(res.headers.get('Retry-After'))
      throw new ChatError({ status: res.status, code: 'http_error', ...(data || {}), ...(retry ? { retry_after: retry } : {}) })
    }
    return data
  }

  // --- cursors, resume, gap fill ---------------------------------------------------------------

  /** Follow a conversation from `lastSeq` (the newest seq the application already shows). */
  track(conversationId, lastSeq = 0) {
    const cur = this.cursors.get(conversationId)
    if (cur === undefined || lastSeq > cur) this.cursors.set(conversationId, lastSeq)
  }

  untrack(conversationId) {
    this.cursors.delete(conversationId)
    this.maxSeen.delete(conversationId)
  }

  cursor(conversationId) {
    return this.cursors.get(conversationId)
  }

  _ingest(msg, fromHistory) {
    const cid = msg.conversation_id
    this._reconcile(msg)
    this._untype(cid, msg.sender_id)
    if (this.seenIds.has(msg.id)) return false
    const cur = this.cursors.get(cid)
    if (cur !== undefined && msg.seq <= cur) return false // already delivered (seq dedupe)
    if (cur !== undefined && msg.seq !== cur + 1) {
      // A gap: something between cur and this one went missing. Resume fetches all of it in
      // order (this one included); until then nothing newer is delivered, so order holds.
      this.maxSeen.set(cid, Math.max(this.maxSeen.get(cid) || 0, msg.seq))
      if (!this.resuming && !this.filling.has(cid)) this._resume([cid])
      return false
    }
    this.cursors.set(cid, msg.seq)
    this.seenIds.add(msg.id)
    if (this.seenIds.size > this.o.dedupeWindow) this.seenIds.delete(this.seenIds.values().next().value)
    if (this.counting) this.resumedCount++
    this.emit('message', { message: msg, resumed: !!this.counting || fromHistory })
    return true
  }

  async _resume(only) {
    const ids = only || [...this.cursors.keys()]
    const cursors = {}
    for (const id of ids) if (this.cursors.has(id) && !this.filling.has(id)) cursors[id] = this.cursors.get(id)
    if (!Object.keys(cursors).length) return
    this.resuming = true
    this.counting = true
    this.resumedCount = 0
    try {
      await this.request({ type: 'resume', cursors })
    } catch (err) {
      if (err.status === 403 || err.status === 404) {
        // One of them is no longer ours: resume each alone, so the others still resume.
        for (const cid of Object.keys(cursors)) {
          try {
            await this.request({ type: 'resume', cursors: { [cid]: cursors[cid] } })
          } catch (e) {
            if (e.status !== 403 && e.status !== 404) break
            this.untrack(cid)
            this._reset({ conversationId: cid, reason: 'not_participant', error: e })
          }
        }
      } else if (err.code !== 'disconnected' && err.code !== 'closed') {
        this.emit('error', err)
      }
    } finally {
      this.resuming = false
      this.counting = false
    }
    if (!this.ws) return
    this.emit('resumed', { count: this.resumedCount, instanceId: this.instanceId })
    this._flushOutbox() // sends made while resuming waited for it
    this._recheck()
  }

  _recheck() {
    // Something seen meanwhile is still ahead of the cursor: resume again.
    const behind = [...this.maxSeen].filter(([cid, s]) => s > (this.cursors.get(cid) ?? s) && !this.filling.has(cid))
    this.maxSeen.clear()
    if (behind.length && this.ws && !this.resuming) this._resume(behind.map(([cid]) => cid))
  }

  async _fill(cid) {
    // resume.truncated: the rest comes page by page over HTTP.
    if (this.filling.has(cid)) return
    this.filling.add(cid)
    let fetched = 0
    let failures = 0
    try {
      for (;;) {
        const after = this.cursors.get(cid) || 0
        let page
        try {
          page = await this.http('GET', `/api/conversations/${encodeURIComponent(cid)}/messages/?after_seq=${after}&limit=200`)
        } catch (err) {
          if (++failures >= 3) return this._reset({ conversationId: cid, reason: 'fill_failed', error: err })
          await sleep(Math.max(500, (err.retry_after || 0) * 1000))
          continue
        }
        for (const m of page.results) this._ingest(m, true) && fetched++
        if (!page.has_more) break
        if (fetched >= this.o.maxFill) {
          const newest = await this.http('GET', `/api/conversations/${encodeURIComponent(cid)}/messages/?limit=1`)
          const last = newest.results.at(-1)
          if (last) this.cursors.set(cid, last.seq)
          return this._reset({ conversationId: cid, reason: 'gap_too_large', fromSeq: after, toSeq: last?.seq })
        }
      }
    } finally {
      this.filling.delete(cid)
      this.emit('resumed', { count: fetched, instanceId: this.instanceId, conversationId: cid })
    }
    if (this.ws && !this.resuming) this._resume([cid])
  }

  _reset(info) {
    try {
      this.o.onReset(info)
    } catch (err) {
      this.emit('error', err)
    }
  }

  /** Older history over HTTP, for scrolling back: `{results, has_more}` in seq order. */
  history(conversationId, { beforeSeq, afterSeq, limit = 50 } = {}) {
    const q = new URLSearchParams({ limit: String(limit) })
    if (beforeSeq != null) q.set('before_seq', String(beforeSeq))
    if (afterSeq != null) q.set('after_seq', String(afterSeq))
    return this.http('GET', `/api/conversations/${encodeURIComponent(conversationId)}/messages/?${q}`)
  }

  // --- sending and the outbox ------------------------------------------------------------------

  async _loadOutbox() {
    try {
      const raw = await this.storage.getItem(this._key())
      this.outbox = raw ? JSON.parse(raw) : []
    } catch {
      this.outbox = []
    }
  }

  _key() {
    return `${this.o.storageKey}:outbox`
  }

  _saveOutbox() {
    try {
      const done = this.storage.setItem(this._key(), JSON.stringify(this.outbox))
      if (done?.catch) done.catch((err) => this.emit('error', err))
    } catch (err) {
      this.emit('error', err)
    }
    this.emit('outbox', this.pendingMessages())
  }

  /** Messages sent but not acknowledged yet (the local echoes to show), oldest first. */
  pendingMessages() {
    return this.outbox.map((e) => ({ ...e }))
  }

  /**
   * Send a message: it goes into the outbox at once (a local echo with its client_msg_id) and
   * is re-sent after every reconnect until acknowledged. Resolves with the stored message.
   */
  async send(conversationId, body) {
    await this.loaded
    if (this.outbox.length >= this.o.outboxLimit) {
      throw new ChatError({ code: 'outbox_full', detail: `${this.outbox.length} messages wait to be sent` })
    }
    const entry = { client_msg_id: newId(), conversation_id: conversationId, body, created_at: new Date().toISOString() }
    this.outbox.push(entry)
    this._saveOutbox()
    const done = new Promise((resolve, reject) => this.sends.set(entry.client_msg_id, { resolve, reject }))
    done.clientMsgId = entry.client_msg_id
    this.emit('echo', { ...entry })
    if (this.state === 'connected' && !this.resuming) this._transmit(entry)
    return done
  }

  _flushOutbox() {
    for (const entry of this.outbox) this._transmit(entry)
  }

  async _transmit(entry) {
    if (entry.inflight || this.state !== 'connected') return
    entry.inflight = true
    try {
      const ack = await this.request({
        type: 'message.send',
        id: `m:${entry.client_msg_id}`.slice(0, 64),
        conversation_id: entry.conversation_id,
        body: entry.body,
        client_msg_id: entry.client_msg_id,
      })
      this._ingest(ack.message, false)
    } catch (err) {
      entry.inflight = false
      if (err.code === 'ack_timeout') {
        // No answer on an open socket: treat it as dead; the reconnect re-sends (same id).
        if (this.state === 'connected') this._closed(1006, 'ack_timeout', true)
      } else if (err.status === 503 || err.status === 429 || err.status >= 500) {
        setTimeout(() => this._transmit(entry), Math.max(1000, (err.retry_after || 1) * 1000))
      } else if (err.status) {
        this._drop(entry.client_msg_id, err) // 400, 403, 404, 413: sending again cannot help
      }
    } finally {
      if (entry.inflight) entry.inflight = false
    }
  }

  _reconcile(msg) {
    if (!msg.client_msg_id || !this.user || msg.sender_id !== this.user.id) return
    const i = this.outbox.findIndex((e) => e.client_msg_id === msg.client_msg_id)
    if (i < 0) return
    this.outbox.splice(i, 1)
    this._saveOutbox()
    const s = this.sends.get(msg.client_msg_id)
    this.sends.delete(msg.client_msg_id)
    this.emit('sent', { clientMsgId: msg.client_msg_id, message: msg })
    s?.resolve(msg)
  }

  _drop(clientMsgId, err) {
    this.outbox = this.outbox.filter((e) => e.client_msg_id !== clientMsgId)
    this._saveOutbox()
    const s = this.sends.get(clientMsgId)
    this.sends.delete(clientMsgId)
    this.emit('failed', { clientMsgId, error: err })
    s?.reject(err)
  }

  // --- presence, typing, receipts --------------------------------------------------------------

  async _syncPresence() {
    try {
      const ack = await this.request({ type: 'presence.sync' })
      for (const p of ack.results) this._presence(p)
      this.emit('presence.snapshot', [...this.presence.values()])
    } catch (err) {
      if (err.code !== 'disconnected' && err.code !== 'closed') this.emit('error', err)
    }
  }

  _presence(p) {
    const cur = this.presence.get(p.user_id)
    if (cur && cur.version > p.version) return // stale: a newer one was applied already
    this.presence.set(p.user_id, p)
    this.emit('presence', p)
  }

  /** Set one's own status: online, away, busy or invisible, with an optional text. */
  setStatus(status, text = '') {
    return this.request({ type: 'status.set', status, text }).then((ack) => {
      if (ack.presence) this._presence(ack.presence)
      return ack.presence
    })
  }

  /**
   * Say whether the user is typing. A `true` is sent at most every few seconds (the server
   * expires a start after 10 s); `false` is sent at once.
   */
  typing(conversationId, isTyping = true) {
    const last = this.lastTypingAt.get(conversationId) || 0
    if (isTyping) {
      if (Date.now() - last < this.o.typingRepeatMs) return
      this.lastTypingAt.set(conversationId, Date.now())
    } else {
      if (!last) return
      this.lastTypingAt.delete(conversationId)
    }
    this._send({ type: 'typing', conversation_id: conversationId, state: isTyping ? 'start' : 'stop' })
  }

  typingUsers(conversationId) {
    return [...(this.typers.get(conversationId)?.keys() || [])]
  }

  /** Mark read up to `seq`; others get a `read` event. */
  markRead(conversationId, seq) {
    return this.request({ type: 'read', conversation_id: conversationId, seq })
  }

  /** Every participant's read position, loaded over HTTP and kept current by events. */
  async loadReceipts(conversationId) {
    const data = await this.http('GET', `/api/conversations/${encodeURIComponent(conversationId)}/read/`)
    const m = new Map()
    for (const r of data.receipts) m.set(r.user_id, Math.max(r.seq, this.receipts.get(conversationId)?.get(r.user_id) || 0))
    this.receipts.set(conversationId, m)
    return m
  }

  async _refreshReceipts() {
    // Read events are not replayed by resume: reload the positions the application follows.
    for (const cid of [...this.receipts.keys()]) {
      try {
        await this.loadReceipts(cid)
        this.emit('receipts', { conversationId: cid, receipts: this.receipts.get(cid) })
      } catch (err) {
        this.emit('error', err)
      }
    }
  }

  /** The ids of the users (not oneself) whose read position is at or past `seq`. */
  seenBy(conversationId, seq) {
    const out = []
    for (const [uid, s] of this.receipts.get(conversationId) || []) if (s >= seq && uid !== this.user?.id) out.push(uid)
    return out
  }
}

export default ChatClient
