// Test helpers: a recording wrapper around the real WebSocket (it can drop or repeat incoming
// frames, as a lossy path would), clients bound to the stack, HTTP calls.
import { ChatClient } from '../src/index.js'

// Node 22 has a global WebSocket, Node 20 with --experimental-websocket; otherwise the `ws`
// package (a dev dependency) stands in. The SDK itself takes either through its options.
export const NodeWebSocket = globalThis.WebSocket || (await import('ws')).WebSocket

export function wire({ dropIn = () => false, dupIn = () => false } = {}) {
  const log = { opened: [], sent: [], received: [], sockets: [] }
  class RecordingWebSocket {
    constructor(url, opts) {
      const ws = new NodeWebSocket(url, opts)
      this.ws = ws
      this.url = url
      log.opened.push(performance.now())
      log.sockets.push(this)
      ws.onopen = (e) => this.onopen?.(e)
      ws.onclose = (e) => this.onclose?.(e)
      ws.onerror = (e) => this.onerror?.(e)
      ws.onmessage = (e) => {
        const frame = JSON.parse(e.data)
        log.received.push(frame)
        if (dropIn(frame)) return
        this.onmessage?.(e)
        if (dupIn(frame)) this.onmessage?.(e)
      }
    }
    get readyState() {
      return this.ws.readyState
    }
    send(data) {
      log.sent.push(JSON.parse(data))
      this.ws.send(data)
    }
    close(code) {
      this.ws.close(code)
    }
  }
  return { WebSocket: RecordingWebSocket, log }
}

/** A client of `user` on the instance named by `where()` (a function: the tests' balancer). */
export function client(stack, user, where, extra = {}) {
  const w = extra.wire || wire()
  const resets = []
  const messages = []
  const states = []
  const c = new ChatClient({
    url: () => stack.instances[where()].ws_url,
    baseUrl: () => stack.instances[where()].url,
    token: stack.users[user].token,
    WebSocket: w.WebSocket,
    storage: extra.storage,
    onReset: (info) => resets.push(info),
    ...extra.options,
  })
  c.on('message', (e) => messages.push(e.message))
  c.on('state', (s) => states.push(s))
  return Object.assign(c, { log: w.log, resets, messages, states })
}

export async function api(stack, instance, user, method, path, body) {
  const res = await fetch(stack.instances[instance].url + path, {
    method,
    headers: { Authorization: `Token ${stack.users[user].token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  })
  const text = await res.text()
  return { status: res.status, body: text ? JSON.parse(text) : null }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

export function nextState(c, pred, timeout = 15000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => (off(), reject(new Error(`no state matching in ${timeout} ms; now ${c.state}`))), timeout)
    const off = c.on('state', (s) => {
      if (pred(s)) clearTimeout(timer), off(), resolve(s)
    })
  })
}
