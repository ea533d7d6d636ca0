// The browser chat app, built on the client SDK. Every text that comes from users (names,
// titles, bodies, status texts) goes into the page through textContent, never as HTML.
import { ChatClient } from '../sdk/index.js'

const me = JSON.parse(document.getElementById('me').textContent)
const $ = (id) => document.getElementById(id)
const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag)
  for (const [k, v] of Object.entries(props)) {
    if (k === 'text') node.textContent = v
    else if (k === 'class') node.className = v
    else if (k.startsWith('data-')) node.setAttribute(k, v)
    else node[k] = v
  }
  node.append(...children)
  return node
}

const conversations = new Map() // id -> conversation (with unread)
const names = new Map([[me.id, me.username]]) // user id -> username
let current = null // the open conversation's id
let oldestSeq = null
const shown = new Map() // message id or client_msg_id -> <li>

const chat = new ChatClient({
  storageKey: `chat-sdk:${me.id}`,
  onReset: ({ conversationId }) => conversationId === current && openConversation(current),
})
window.chat = chat // for the console and the end-to-end tests

// --- connection banner -------------------------------------------------------------------------

const banner = $('banner')
function say(state, text) {
  banner.dataset.state = state
  banner.textContent = text
}
chat.on('state', (s) => {
  if (s.state === 'connected') say('connected', `Connected to instance ${s.instanceId}`)
  else if (s.state === 'connecting') say('connecting', 'Connecting…')
  else if (s.state === 'reconnecting') {
    const wait = s.delayMs != null ? ` in ${(s.delayMs / 1000).toFixed(1)} s` : ''
    say('reconnecting', `Reconnecting${wait}${s.reason ? ` (${s.reason.replaceAll('_', ' ')})` : ''}…`)
  } else if (s.state === 'closed') say('closed', `Disconnected${s.reason ? `: ${s.reason.replaceAll('_', ' ')}` : ''}`)
})
chat.on('resumed', ({ count, instanceId }) => {
  if (count > 0) say('connected', `Connected to instance ${instanceId} · resumed ${count} message${count === 1 ? '' : 's'}`)
})

// --- conversations -----------------------------------------------------------------------------

function title(c) {
  if (c.title) return c.title
  return c.participants.filter((p) => p.user_id !== me.id).map((p) => p.username).join(', ') || 'Just you'
}

function dotFor(userId) {
  const p = chat.presence.get(userId)
  const self = userId === me.id && chat.state === 'connected' ? 'online' : 'offline'
  const status = p ? p.status : self
  return el('span', { class: 'dot', 'data-status': status, 'data-user': String(userId), title: status })
}

function renderConversations() {
  const list = $('conversations')
  list.replaceChildren()
  for (const c of conversations.values()) {
    const others = c.participants.filter((p) => p.user_id !== me.id)
    const item = el(
      'li',
      { class: c.id === current ? 'conversation-item active' : 'conversation-item', 'data-id': c.id },
      el('span', { class: 'dots' }, ...others.map((p) => dotFor(p.user_id))),
      el('span', { class: 'title', text: title(c) }),
    )
    if (c.unread > 0) item.append(el('span', { class: 'unread', text: String(c.unread), title: 'unread' }))
    item.addEventListener('click', () => openConversation(c.id))
    list.append(item)
  }
}

function addConversation(c) {
  for (const p of c.participants) names.set(p.user_id, p.username)
  conversations.set(c.id, { unread: 0, ...c })
  chat.track(c.id, c.last_seq)
}

async function loadConversations() {
  const data = await chat.http('GET', '/api/conversations/')
  for (const c of data.results) addConversation(c)
  renderConversations()
  const wanted = new URLSearchParams(location.hash.slice(1)).get('c')
  const first = (wanted && conversations.has(wanted) && wanted) || conversations.keys().next().value
  if (first) await openConversation(first)
}

chat.on('conversation.joined', (c) => {
  addConversation(c)
  renderConversations()
})
chat.on('conversation.left', ({ conversation_id: cid }) => {
  conversations.delete(cid)
  if (cid === current) {
    current = null
    $('conversation').hidden = true
    $('empty').hidden = false
  }
  renderConversations()
})

// --- one conversation --------------------------------------------------------------------------

function renderMembers() {
  const c = conversations.get(current)
  if (!c) return
  $('members').replaceChildren(
    ...c.participants.map((p) => {
      const presence = chat.presence.get(p.user_id)
      const text = p.user_id === me.id ? 'you' : presence?.text || presence?.status || 'offline'
      return el('li', { class: 'member' }, dotFor(p.user_id), el('span', { text: p.username }), el('small', { text }))
    }),
  )
}

function messageItem(m, pending = false) {
  const mine = m.sender_id === me.id || pending
  const li = el(
    'li',
    { class: `message${mine ? ' mine' : ''}${pending ? ' pending' : ''}`, 'data-seq': String(m.seq ?? '') },
    el('span', { class: 'sender', text: mine ? 'You' : names.get(m.sender_id) || `user ${m.sender_id}` }),
    el('span', { class: 'body', text: m.body }),
    el('span', { class: 'meta', text: pending ? 'sending…' : time(m.created_at) }),
  )
  if (m.id) li.dataset.id = m.id
  if (m.client_msg_id) li.dataset.clientMsgId = m.client_msg_id
  return li
}

const time = (iso) => (iso ? new Date(iso).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : '')

function place(li, m) {
  // Keep the list in seq order; local echoes (no seq yet) stay at the end.
  const list = $('message-list')
  if (m.seq == null) return list.append(li)
  for (const other of list.children) {
    const seq = Number(other.dataset.seq)
    if (!other.dataset.seq || seq > m.seq) return list.insertBefore(li, other)
  }
  list.append(li)
}

function show(m) {
  if (shown.has(m.id)) return
  const echo = m.client_msg_id && shown.get(m.client_msg_id)
  const li = messageItem(m)
  if (echo) echo.remove(), shown.delete(m.client_msg_id)
  place(li, m)
  shown.set(m.id, li)
}

function renderSeen() {
  for (const old of document.querySelectorAll('.seen')) old.remove()
  const mine = [...$('message-list').querySelectorAll('.message.mine:not(.pending)')].at(-1)
  if (!mine) return
  const who = chat.seenBy(current, Number(mine.dataset.seq)).map((id) => names.get(id) || `user ${id}`)
  if (who.length) mine.append(el('span', { class: 'seen', text: `Seen by ${who.join(', ')}` }))
}

function scrollDown() {
  const box = $('messages')
  box.scrollTop = box.scrollHeight
}

let readTimer = null
function markRead() {
  clearTimeout(readTimer)
  readTimer = setTimeout(() => {
    const c = conversations.get(current)
    const last = [...$('message-list').querySelectorAll('.message[data-id]')].at(-1)
    if (!c || !last || document.visibilityState !== 'visible' || chat.state !== 'connected') return
    const seq = Number(last.dataset.seq)
    if (seq > (c.readSeq || 0)) {
      c.readSeq = seq
      chat.markRead(current, seq).catch(() => (c.readSeq = 0))
    }
    c.unread = 0
    renderConversations()
  }, 200)
}

async function openConversation(cid) {
  current = cid
  location.hash = `c=${encodeURIComponent(cid)}`
  const c = conversations.get(cid)
  $('empty').hidden = true
  $('conversation').hidden = false
  $('conv-title').textContent = title(c)
  $('message-list').replaceChildren()
  shown.clear()
  renderMembers()
  renderTyping([])
  const [page] = await Promise.all([chat.history(cid, { limit: 30 }), chat.loadReceipts(cid)])
  if (cid !== current) return
  for (const m of page.results) show(m)
  oldestSeq = page.results[0]?.seq ?? null
  $('older').hidden = !page.has_more
  const last = page.results.at(-1)
  if (last) chat.track(cid, last.seq)
  for (const e of chat.pendingMessages()) if (e.conversation_id === cid) echo(e)
  renderSeen()
  renderConversations()
  scrollDown()
  markRead()
  $('body').focus()
}

$('older').addEventListener('click', async () => {
  if (oldestSeq == null) return
  const box = $('messages')
  const height = box.scrollHeight
  const page = await chat.history(current, { beforeSeq: oldestSeq, limit: 30 })
  for (const m of page.results) show(m)
  oldestSeq = page.results[0]?.seq ?? oldestSeq
  $('older').hidden = !page.has_more
  box.scrollTop = box.scrollHeight - height
})

function echo(e) {
  if (shown.has(e.client_msg_id)) return
  const li = messageItem({ ...e, sender_id: me.id }, true)
  place(li, e)
  shown.set(e.client_msg_id, li)
  scrollDown()
}

chat.on('echo', (e) => e.conversation_id === current && echo(e))
chat.on('sent', ({ message }) => message.conversation_id === current && show(message))
chat.on('failed', ({ clientMsgId, error }) => {
  const li = shown.get(clientMsgId)
  if (li) li.classList.replace('pending', 'failed'), (li.querySelector('.meta').textContent = `not sent: ${error.detail}`)
})
chat.on('message', ({ message: m }) => {
  if (m.conversation_id === current) {
    show(m)
    scrollDown()
    markRead()
    renderSeen()
  } else if (conversations.has(m.conversation_id) && m.sender_id !== me.id) {
    conversations.get(m.conversation_id).unread++
  }
  const c = conversations.get(m.conversation_id)
  if (c) {
    c.last_seq = Math.max(c.last_seq, m.seq)
    // Latest activity first.
    conversations.delete(c.id)
    const rest = [...conversations]
    conversations.clear()
    conversations.set(c.id, c)
    for (const [k, v] of rest) conversations.set(k, v)
  }
  renderConversations()
})

$('composer').addEventListener('submit', (ev) => {
  ev.preventDefault()
  const input = $('body')
  const body = input.value
  if (!body.trim() || !current) return
  input.value = ''
  chat.typing(current, false)
  chat.send(current, body).catch(() => {})
})
$('body').addEventListener('input', () => current && chat.typing(current, $('body').value.length > 0))
$('body').addEventListener('blur', () => current && chat.typing(current, false))

// --- typing, receipts, presence ----------------------------------------------------------------

function renderTyping(ids) {
  const who = ids.map((id) => names.get(id) || `user ${id}`)
  $('typing').textContent = who.length ? `${who.join(', ')} ${who.length === 1 ? 'is' : 'are'} typing…` : ''
}
chat.on('typing', ({ conversationId, userIds }) => conversationId === current && renderTyping(userIds))
chat.on('read', ({ conversationId }) => conversationId === current && renderSeen())
chat.on('receipts', ({ conversationId }) => conversationId === current && renderSeen())
chat.on('presence', (p) => {
  for (const dot of document.querySelectorAll(`.dot[data-user="${p.user_id}"]`)) {
    dot.dataset.status = p.status
    dot.title = p.status
  }
  if (p.user_id === me.id) {
    $('my-dot').dataset.status = p.status
    $('status').value = p.status === 'offline' ? 'online' : p.status
    if (document.activeElement !== $('status-text')) $('status-text').value = p.text || ''
  }
  renderMembers()
})
$('status-form').addEventListener('submit', (ev) => {
  ev.preventDefault()
  chat.setStatus($('status').value, $('status-text').value).catch((err) => say('connected', `Status not set: ${err.detail}`))
})
document.addEventListener('visibilitychange', () => document.visibilityState === 'visible' && markRead())

// --- start -------------------------------------------------------------------------------------

$('my-name').textContent = me.username
chat.on('hello', () => {
  if ($('my-dot').dataset.status === 'offline') $('my-dot').dataset.status = chat.presence.get(me.id)?.status || 'online'
  renderMembers()
})
chat.connect().catch(() => {})
loadConversations().catch((err) => say('closed', `Could not load conversations: ${err.detail || err.message}`))
