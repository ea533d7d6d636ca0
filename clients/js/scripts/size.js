// Prints the SDK's size, raw and gzipped (the README states it; the tests keep it under 10 KB).
import { readFileSync } from 'node:fs'
import { gzipSync } from 'node:zlib'

const src = readFileSync(new URL('../src/index.js', import.meta.url))
const gz = gzipSync(src, { level: 9 }).length
console.log(`src/index.js: ${src.length} bytes, ${gz} bytes gzipped (${(gz / 1024).toFixed(1)} KB)`)
