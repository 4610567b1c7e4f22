import { createHash, randomBytes } from 'node:crypto';
import type Redis from 'ioredis';

/**
 * The Lua scripts of the adapter. Each runs atomically on the server, so a message moved from a
 * sorted set to a stream is in exactly one of them at any time, whoever crashes when.
 */

/** Server time in epoch ms: due times are the server's, so publishers' clocks need not agree. */
const NOW = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)`;

/** XADD arguments with the approximate trim when maxLen (ARGV[n]) is above 0. */
const XADD_ARGS = `local function xaddArgs(key, maxLen)
  local args = {key}
  if maxLen > 0 then
    args[2] = 'MAXLEN'
    args[3] = '~'
    args[4] = maxLen
  end
  args[#args + 1] = '*'
  return args
end`;

/** KEYS[1] the sorted set; ARGV[1] the delay in ms, ARGV[2] the member. Scores it due at server time + delay. */
export const ADD_DELAYED = `${NOW}
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
return now + tonumber(ARGV[1])`;

/**
 * KEYS[1] the sorted set, KEYS[2] the stream; ARGV[1] the most to move, ARGV[2] maxLen. Moves the
 * members due by now to the stream (XADD, then ZREM) and returns { moved, the next due score or nil, the server's now }.
 */
export const MOVE_DUE = `${NOW}
${XADD_ARGS}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local args = xaddArgs(KEYS[2], tonumber(ARGV[2]))
  local pos = 17
  while pos <= #member do
    local len
    len, pos = struct.unpack('>I4', member, pos)
    args[#args + 1] = string.sub(member, pos, pos + len - 1)
    pos = pos + len
  end
  redis.call('XADD', unpack(args))
  redis.call('ZREM', KEYS[1], member)
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, first[2] or false, now}`;

/**
 * KEYS[1] the topic's stream; ARGV[1] '1' to refuse when it has no consumer group, ARGV[2]
 * maxLen, ARGV[3..] the fields. Returns { groups, written (1 or 0) }.
 */
export const PUBLISH_COUNTING_GROUPS = `${XADD_ARGS}
local groups = 0
if redis.call('EXISTS', KEYS[1]) == 1 then groups = #redis.call('XINFO', 'GROUPS', KEYS[1]) end
if groups == 0 and ARGV[1] == '1' then return {0, 0} end
local args = xaddArgs(KEYS[1], tonumber(ARGV[2]))
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
redis.call('XADD', unpack(args))
return {groups, 1}`;

/**
 * A sorted-set member holding an entry's fields: 16 random bytes (so equal messages stay distinct
 * members), then each field as a 4-byte big-endian length and its bytes. Binary-safe, as the
 * body may be a poison message's bytes as they came.
 */
export function encodeDelayedMember(fields: readonly (string | Buffer)[]): Buffer {
  const parts: Buffer[] = [randomBytes(16)];
  for (const field of fields) {
    const bytes = typeof field === 'string' ? Buffer.from(field, 'utf8') : field;
    const length = Buffer.allocUnsafe(4);
    length.writeUInt32BE(bytes.length, 0);
    parts.push(length, bytes);
  }
  return Buffer.concat(parts);
}

/** A script run by its SHA1, loaded on the first NOSCRIPT (a restarted server forgets scripts). */
export class Script {
  private readonly sha: string;

  constructor(private readonly source: string) {
    this.sha = createHash('sha1').update(source).digest('hex');
  }

  async run(client: Redis, keys: readonly string[], args: readonly (string | number | Buffer)[]): Promise<unknown> {
    try {
      return await client.evalsha(this.sha, keys.length, ...keys, ...args);
    } catch (error) {
      if (!(error instanceof Error) || !error.message.startsWith('NOSCRIPT')) throw error;
      return client.eval(this.source, keys.length, ...keys, ...args);
    }
  }
}

export const SCRIPTS = {
  addDelayed: new Script(ADD_DELAYED),
  moveDue: new Script(MOVE_DUE),
  publishCountingGroups: new Script(PUBLISH_COUNTING_GROUPS),
};
