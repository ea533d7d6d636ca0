#!/usr/bin/env node
// A command-line chat: node --experimental-websocket examples/cli.js http://127.0.0.1:8000 alice demo-password
// Prints every message of the user's conversations; a line typed on stdin is sent to the first one.
import { createInterface } from 'node:readline'
import { ChatClient } from '../src/index.js'

const [base = 'http://127.0.0.1:8000', username = 'alice', password = 'demo-password'] = process.argv.slice(2)
const login = await fetch(`${base}/api/auth/token/`, {
  method: 'POST',
  headers: { 'Content-Type': 'application/json' },
  body: JSON.stringify({ username, password }),
})
if (!login.ok) throw new Error(`sign-in failed: ${login.status}`)
const { token } = await login.json()

const chat = new ChatClient({
  baseUrl: base,
  token,
  onReset: ({ conversationId, reason }) => console.log(`[history of ${conversationId} must be reloaded: ${reason}]`),
})
chat.on('state', (s) => console.log(`[${s.state}${s.instanceId ? ` on ${s.instanceId}` : ''}${s.reason ? `: ${s.reason}` : ''}]`))
chat.on('message', ({ message: m }) => console.log(`#${m.seq} ${m.sender_id}: ${m.body}`))
chat.on('resumed', ({ count }) => count && console.log(`[resumed ${count} messages]`))

const { results: conversations } = await chat.http('GET', '/api/conversations/')
for (const c of conversations) chat.track(c.id, c.last_seq)
await chat.connect()
console.log(`signed in as ${chat.user.username}; typing a line sends it to "${conversations[0]?.title}"`)
for await (const line of createInterface({ input: process.stdin })) {
  if (line.trim() && conversations[0]) await chat.send(conversations[0].id, line)
}
chat.close()
