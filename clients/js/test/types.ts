// Compiled by `npm run typecheck` (tsc --strict): the declarations accept the documented usage
// and reject frames that the protocol does not have.
import { ChatClient, type Message, type ServerFrame, type ClientFrame } from '../src/index.js'

const chat = new ChatClient({ baseUrl: 'http://127.0.0.1:8000', token: 't', onReset: (info) => void info.conversationId })
chat.on('state', (s) => s.state satisfies 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed')
chat.on('message', ({ message }: { message: Message }) => void message.seq.toFixed())
chat.on('presence', (p) => void p.version.toFixed())
chat.on('typing', (t) => void t.userIds.map((id) => id + 1))
const sent: Promise<Message> = chat.send('c', 'hi')
void sent
void chat.setStatus('busy', 'in a meeting')

const hello: ServerFrame = {
  type: 'hello',
  connection_id: 'x',
  instance_id: 'a',
  user: { id: 1, username: 'alice' },
  heartbeat_interval: 25,
  reconnect_window_ms: 10000,
}
void hello
const resume: ClientFrame = { type: 'resume', cursors: { c: 3 } }
void resume
// @ts-expect-error: not a status the server knows
void chat.setStatus('sleeping')
// @ts-expect-error: onReset is required
void new ChatClient({ token: 't' })
// @ts-expect-error: a message.send needs a body
const bad: ClientFrame = { type: 'message.send', conversation_id: 'c' }
void bad
