#!lua name=payauth
--[[
The payauth Redis Function library: every multi-key state change is one call
here, on keys sharing one partition hash tag, so it is atomic on a single
Redis and on Redis Cluster alike. Loaded once at start-up (FUNCTION LOAD
REPLACE); the server never sends script text per request.

Money is integer minor units. Redis Lua numbers are doubles, exact up to 2^53;
the server caps every amount and balance at 10^15 minor units, so all sums
here stay exact. Amounts are written back with '%d', never tostring().
--]]

local LIBRARY_VERSION = '1'

local function fmt(n)
  return string.format('%d', n)
end

-- Return the stored answer when the idempotency record exists: {'replay', ...}
-- or {'conflict'} when the same request_id came with another body.
local function stored_answer(idem_key, fingerprint)
  local rec = redis.call('HMGET', idem_key, 'fp', 'outcome', 'approved', 'auth_id',
                         'decided_ms', 'base')
  if not rec[1] then
    return nil
  end
  if rec[1] ~= fingerprint then
    return {'conflict'}
  end
  return {'replay', rec[2], rec[3], rec[4], rec[5], rec[6]}
end

--[[
authorize_commit: re-check the account, place the hold, store the answer and
append the decision event, all at once.

KEYS: 1 account, 2 idempotency record, 3 partition event stream,
      4 account's holds (zset), 5 the new hold, 6 partition expiries (zset)
ARGV: 1 request_id, 2 request fingerprint, 3 mode ('hold' to decide on funds,
      'final' to record a decision already taken), 4 amount, 5 partial_ok ('1'/'0'),
      6 now (ms), 7 hold expiry (ms), 8 authorization id, 9 idempotency ttl (ms),
      10 response without the funds outcome (serialized AuthorizeResponse),
      11 event without the funds outcome (serialized DecisionEvent),
      12 account id, 13 merchant id, 14 currency
Returns {'new', outcome, approved, auth_id, decided_ms, event_id},
        {'replay', outcome, approved, auth_id, decided_ms, base} or {'conflict'}.
Outcomes: 'approved', 'partial', 'insufficient', 'account_closed',
'account_frozen', 'account_missing', 'currency_mismatch' and 'final' (the
base response is the whole answer).
--]]
local function authorize_commit(keys, args)
  local account_key, idem_key, events_key = keys[1], keys[2], keys[3]
  local holds_key, hold_key, expiries_key = keys[4], keys[5], keys[6]
  local request_id, fingerprint, mode = args[1], args[2], args[3]
  local amount = tonumber(args[4])
  local partial_ok = args[5] == '1'
  local now_ms, expires_ms = args[6], args[7]
  local auth_id, idem_ttl_ms = args[8], args[9]
  local base, event = args[10], args[11]
  local account_id, merchant_id, currency = args[12], args[13], args[14]

  local previous = stored_answer(idem_key, fingerprint)
  if previous then
    return previous
  end

  local outcome, approved = 'final', 0
  if mode == 'hold' then
    local acct = redis.call('HMGET', account_key, 'kind', 'status', 'balance', 'limit', 'held',
                            'currency')
    if not acct[1] then
      outcome = 'account_missing'
    elseif acct[2] == 'closed' then
      outcome = 'account_closed'
    elseif acct[2] ~= 'active' then
      outcome = 'account_frozen'
    elseif acct[6] ~= currency then
      outcome = 'currency_mismatch'
    else
      local balance, limit, held = tonumber(acct[3]), tonumber(acct[4]), tonumber(acct[5])
      local available
      if acct[1] == 'credit' then
        available = limit - balance - held
      else
        available = balance - held
      end
      if amount <= available then
        outcome, approved = 'approved', amount
      elseif partial_ok and available > 0 then
        outcome, approved = 'partial', available
      else
        outcome = 'insufficient'
      end
    end
  end

  if approved > 0 then
    redis.call('HINCRBY', account_key, 'held', fmt(approved))
    redis.call('HSET', account_key, 'updated_ms', now_ms)
    redis.call('HSET', hold_key,
               'account_id', account_id, 'request_id', request_id, 'amount', fmt(approved),
               'currency', currency, 'merchant_id', merchant_id, 'created_ms', now_ms,
               'expires_ms', expires_ms, 'status', 'held')
    redis.call('ZADD', holds_key, expires_ms, auth_id)
    redis.call('ZADD', expiries_key, expires_ms, auth_id)
  else
    auth_id = ''
  end

  redis.call('HSET', idem_key, 'fp', fingerprint, 'outcome', outcome, 'approved', fmt(approved),
             'auth_id', auth_id, 'decided_ms', now_ms, 'base', base)
  redis.call('PEXPIRE', idem_key, idem_ttl_ms)
  local event_id = redis.call('XADD', events_key, '*', 'kind', 'authorization',
                              'outcome', outcome, 'approved', fmt(approved), 'auth_id', auth_id,
                              'decided_ms', now_ms, 'event', event)
  return {'new', outcome, fmt(approved), auth_id, now_ms, event_id}
end

--[[
record_unrouted: store the answer to a request that reached no account (an
unknown card) on its request_id claim, and append its event to the claim's
partition stream.

KEYS: 1 request claim, 2 the claim partition's event stream
ARGV: 1 request fingerprint, 2 now (ms), 3 idempotency ttl (ms),
      4 response (serialized AuthorizeResponse), 5 event (serialized DecisionEvent)
Returns like authorize_commit.
--]]
local function record_unrouted(keys, args)
  local claim_key, events_key = keys[1], keys[2]
  local fingerprint, now_ms, ttl_ms, base, event = args[1], args[2], args[3], args[4], args[5]
  local rec = redis.call('HMGET', claim_key, 'fp', 'base', 'decided_ms')
  if rec[1] and rec[1] ~= fingerprint then
    return {'conflict'}
  end
  if rec[2] then
    return {'replay', 'final', '0', '', rec[3], rec[2]}
  end
  redis.call('HSET', claim_key, 'fp', fingerprint, 'base', base, 'decided_ms', now_ms)
  redis.call('PEXPIRE', claim_key, ttl_ms)
  local event_id = redis.call('XADD', events_key, '*', 'kind', 'authorization',
                              'outcome', 'final', 'approved', '0', 'auth_id', '',
                              'decided_ms', now_ms, 'event', event)
  return {'new', 'final', '0', '', now_ms, event_id}
end

--[[
upsert_account: create an account or update its status, balance and limit.
Kind and currency are fixed at creation; held is only ever moved by holds.

KEYS: 1 account
ARGV: 1 kind, 2 status, 3 currency, 4 balance, 5 limit, 6 now (ms)
Returns {'created' or 'updated', kind, status, currency, balance, limit, held,
updated_ms} or an error naming the field that may not change.
--]]
local function upsert_account(keys, args)
  local key = keys[1]
  local kind, status, currency, balance, limit, now_ms =
    args[1], args[2], args[3], args[4], args[5], args[6]
  local cur = redis.call('HMGET', key, 'kind', 'currency')
  local verb = 'updated'
  if not cur[1] then
    verb = 'created'
    redis.call('HSET', key, 'kind', kind, 'currency', currency, 'held', '0',
               'created_ms', now_ms)
  else
    if cur[1] ~= kind then
      return redis.error_reply('IMMUTABLE kind')
    end
    if cur[2] ~= currency then
      return redis.error_reply('IMMUTABLE currency')
    end
  end
  redis.call('HSET', key, 'status', status, 'balance', balance, 'limit', limit,
             'updated_ms', now_ms)
  local acct = redis.call('HMGET', key, 'kind', 'status', 'currency', 'balance', 'limit', 'held',
                          'updated_ms')
  return {verb, acct[1], acct[2], acct[3], acct[4], acct[5], acct[6], acct[7]}
end

local function library_version()
  return LIBRARY_VERSION
end

redis.register_function('payauth_authorize_commit', authorize_commit)
redis.register_function('payauth_record_unrouted', record_unrouted)
redis.register_function('payauth_upsert_account', upsert_account)
redis.register_function{function_name = 'payauth_version', callback = library_version,
                        flags = {'no-writes'}}
