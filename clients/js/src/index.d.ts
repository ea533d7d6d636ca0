// Type declarations of the chat client SDK, written against the WebSocket protocol's frames
// (docs: "WebSocket protocol" of the server's contract). Checked by `npm run typecheck`.

// --- protocol frames ---------------------------------------------------------------------------

export interface User {
  id: number
  username: string
}

export interface Message {
  id: string
  conversation_id: string
  seq: number
  sender_id: number | null
  body: string
  client_msg_id: string | null
  created_at: string
}

export interface Participant {
  user_id: number
  username: string
  role: 'owner' | 'member'
  joined_at: string
}

export interface Conversation {
  id: string
  title: string
  owner_id: number | null
  created_at: string
  last_seq: number
  last_message_at: string | null
  participants: Participant[]
  unread?: number
}

export type Status = 'online' | 'away' | 'busy' | 'invisible'

export interface Presence {
  user_id: number
  status: Status | 'offline'
  text: string
  online: boolean
  last_seen: string | null
  version: number
}

export interface HelloFrame {
  type: 'hello'
  connection_id: string
  instance_id: string
  user: User
  heartbeat_interval: number
  reconnect_window_ms?: number
}
export interface AckFrame {
  type: 'ack'
  id: string
  [field: string]: unknown
}
export interface ErrorFrame {
  type: 'error'
  id: string | null
  status: number
  code: string
  detail: string
  errors?: Record<string, string[]>
  retry_after?: number
}
export interface MessageNewFrame {
  type: 'message.new'
  message: Message
}
export interface ResumeTruncatedFrame {
  type: 'resume.truncated'
  conversation_id: string
  next_seq: number
}
export interface TypingFrame {
  type: 'typing'
  conversation_id: string
  user_id: number
  state: 'start' | 'stop'
}
export interface ReadFrame {
  type: 'read'
  conversation_id: string
  user_id: number
  seq: number
  read_at: string | null
}
export interface PresenceFrame extends Presence {
  type: 'presence'
}
export interface ConversationJoinedFrame {
  type: 'conversation.joined'
  conversation: Conversation
}
export interface ConversationLeftFrame {
  type: 'conversation.left'
  conversation_id: string
}
export interface PongFrame {
  type: 'pong'
  id?: string
}
export type ServerFrame =
  | HelloFrame
  | AckFrame
  | ErrorFrame
  | MessageNewFrame
  | ResumeTruncatedFrame
  | TypingFrame
  | ReadFrame
  | PresenceFrame
  | ConversationJoinedFrame
  | ConversationLeftFrame
  | PongFrame

export type ClientFrame = { id?: string } & (
  | { type: 'message.send'; conversation_id: string; body: string; client_msg_id?: string }
  | { type: 'typing'; conversation_id: string; state: 'start' | 'stop' }
  | { type: 'read'; conversation_id: string; seq: number }
  | { type: 'status.set'; status: Status; text?: string }
  | { type: 'resume'; cursors: Record<string, number> }
  | { type: 'presence.sync' }
  | { type: 'ping' }
)

// --- the client ----------------------------------------------------------------------------------

export type State = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed'

export interface StateChange {
  state: State
  instanceId: string | null
  /** Why: 'connected', 'reconnected', 'server_restart' (1012), 'fanout_lost' (1011),
   * 'slow_consumer' (4008), 'abnormal' (1006), 'dead_connection', 'connect_timeout', 'ack_timeout',
   * 'unauthorized' (4401), 'deactivated' (4403), 'disconnected_by_operator' (4000),
   * 'client_closed', … */
  reason: string | null
  code: number | null
  attempt?: number
  /** The wait before the next attempt (reconnecting only). */
  delayMs?: number
}

export interface ResetInfo {
  conversationId: string
  reason: 'gap_too_large' | 'fill_failed' | 'not_participant'
  fromSeq?: number
  toSeq?: number
  error?: ChatError
}

export interface OutboxEntry {
  client_msg_id: string
  conversation_id: string
  body: string
  created_at: string
}

/** localStorage's shape; getItem/setItem may return promises (IndexedDB wrappers, files). */
export interface Storage {
  getItem(key: string): string | null | Promise<string | null>
  setItem(key: string, value: string): void | Promise<void>
}

export interface ChatClientOptions {
  /** Called when a conversation's history cannot be completed by the client; the application
   * reloads that conversation (required). */
  onReset: (info: ResetInfo) => void
  /** HTTP origin of the API; default: the page's origin. A function is asked before every connect. */
  baseUrl?: string | (() => string)
  /** WebSocket URL; default: baseUrl with ws(s):// and /ws/chat/. */
  url?: string | (() => string)
  /** Native clients: a DRF token (or a function returning one). Without it the browser's
   * session is used (a ws-ticket is fetched with the session cookie and CSRF token). */
  token?: string | (() => string | Promise<string>)
  /** Send the token as an Authorization header on the handshake (default outside browsers);
   * otherwise it buys a single-use ticket over HTTP first. */
  tokenInHeader?: boolean
  /** On close 4401: return a new token to reconnect with, or nothing to stop. */
  onAuthError?: () => string | null | undefined | Promise<string | null | undefined>
  csrfToken?: string
  WebSocket?: new (url: string, options?: unknown) => WebSocket
  fetch?: typeof fetch
  storage?: Storage
  storageKey?: string
  random?: () => number
  /** Until a hello names the server's window (default 10000). */
  reconnectWindowMs?: number
  maxBackoffMs?: number
  ackTimeoutMs?: number
  /** No frame this long after a ping: the connection is dead (default 10000). */
  pongTimeoutMs?: number
  /** No hello this long after opening the socket: give up and retry (default 10000). */
  connectTimeoutMs?: number
  outboxLimit?: number
  maxFill?: number
  typingExpiryMs?: number
  typingRepeatMs?: number
  dedupeWindow?: number
}

export interface ChatClientEvents {
  state: StateChange
  hello: HelloFrame
  message: { message: Message; resumed: boolean }
  echo: OutboxEntry
  sent: { clientMsgId: string; message: Message }
  failed: { clientMsgId: string; error: ChatError }
  outbox: OutboxEntry[]
  resumed: { count: number; instanceId: string | null; conversationId?: string }
  typing: { conversationId: string; userIds: number[] }
  read: { conversationId: string; userId: number; seq: number; readAt: string | null }
  /** After a reconnect: the read positions of a conversation loaded with loadReceipts(), reloaded. */
  receipts: { conversationId: string; receipts: Map<number, number> }
  presence: Presence
  'presence.snapshot': Presence[]
  'conversation.joined': Conversation
  'conversation.left': ConversationLeftFrame
  'resume.truncated': ResumeTruncatedFrame
  error: Error
}

export declare class ChatError extends Error {
  status?: number
  code?: string
  detail?: string
  errors?: Record<string, string[]>
  retry_after?: number
}

export declare const STATES: readonly State[]

export declare class ChatClient {
  constructor(options: ChatClientOptions)
  readonly state: State
  readonly instanceId: string | null
  readonly user: User | null
  readonly presence: Map<number, Presence>
  readonly receipts: Map<string, Map<number, number>>
  on<K extends keyof ChatClientEvents>(event: K, fn: (data: ChatClientEvents[K]) => void): () => void
  connect(): Promise<HelloFrame>
  close(reason?: string): void
  wake(): void
  track(conversationId: string, lastSeq?: number): void
  untrack(conversationId: string): void
  cursor(conversationId: string): number | undefined
  send(conversationId: string, body: string): Promise<Message> & { clientMsgId?: string }
  pendingMessages(): OutboxEntry[]
  history(
    conversationId: string,
    page?: { beforeSeq?: number; afterSeq?: number; limit?: number },
  ): Promise<{ results: Message[]; has_more: boolean }>
  typing(conversationId: string, isTyping?: boolean): void
  typingUsers(conversationId: string): number[]
  markRead(conversationId: string, seq: number): Promise<AckFrame>
  loadReceipts(conversationId: string): Promise<Map<number, number>>
  seenBy(conversationId: string, seq: number): number[]
  setStatus(status: Status, text?: string): Promise<Presence>
  request(frame: ClientFrame, timeoutMs?: number): Promise<AckFrame>
  http<T = unknown>(method: string, path: string, body?: unknown): Promise<T>
}

export default ChatClient
