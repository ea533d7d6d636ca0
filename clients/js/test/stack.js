// Starts `python -m harness.stack` (Redis, a fresh PostgreSQL database, demo users, uvicorn
// instances) and talks to it over stdin/stdout. Closing stdin stops all of it.
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import path from 'node:path'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..')
const PYTHON =
  process.env.CHAT_PYTHON || (process.env.VIRTUAL_ENV ? path.join(process.env.VIRTUAL_ENV, 'bin/python') : 'python3')

export async function startStack({ instances = 2, env = {} } = {}) {
  const args = ['-m', 'harness.stack', '--instances', String(instances)]
  for (const [k, v] of Object.entries(env)) args.push('--env', `${k}=${v}`)
  const proc = spawn(PYTHON, args, { cwd: ROOT, stdio: ['pipe', 'pipe', 'inherit'] })
  const lines = createInterface({ input: proc.stdout })
  const waiting = []
  lines.on('line', (line) => waiting.shift()?.(JSON.parse(line)))
  const next = () =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('harness.stack did not answer in 90 s')), 90000)
      waiting.push((v) => (clearTimeout(timer), resolve(v)))
      proc.once('exit', (code) => reject(new Error(`harness.stack exited with ${code}`)))
    })
  const info = await next()
  const stack = {
    ...info,
    proc,
    async command(cmd) {
      proc.stdin.write(cmd + '\n')
      const answer = await next()
      if (!answer.ok) throw new Error(answer.error)
      Object.assign(stack, answer)
      return answer
    },
    kill: (name) => stack.command(`kill ${name}`),
    start: (name) => stack.command(`start ${name}`),
    freeze: (name) => stack.command(`freeze ${name}`),
    thaw: (name) => stack.command(`thaw ${name}`),
    async stop() {
      proc.stdin.end()
      await new Promise((r) => (proc.exitCode !== null ? r() : proc.once('exit', r)))
    },
  }
  return stack
}

export async function waitFor(fn, { timeout = 10000, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout
  for (;;) {
    const v = await fn()
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}
