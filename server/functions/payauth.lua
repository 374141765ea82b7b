#!lua name=payauth
--[[
The payauth Redis Function library: every state change that moves money is
one call here, on keys sharing one partition hash tag `{pN}`, so it is atomic
on a single Redis and on Redis Cluster alike. Loaded once at start-up
(FUNCTION LOAD REPLACE); the server never sends script text per request.

Each function is routed by its first key and receives the partition's tag;
the other keys of the same partition are named here exactly as in
payauth/server/keys.py (same tag, so same slot).

Money is integer minor units. Redis Lua numbers are doubles, exact up to 2^53;
the server caps every amount and balance at 10^15 minor units, so all sums
here stay exact. Amounts are written back with '%d', never tostring().

Every movement of money appends a ledger entry (`ledger:{pN}:<account>`) with
the change it made to the account's `balance` and `held`, in the same call as
the change itself: `payauth reconcile` checks that the sums of those entries
equal the account, always.
--]]

local function fmt(n)
  return string.format('%d', n)
end

-- The loyalty engine (functions/loyalty.lua, appended to this library when it
-- is loaded) fills this table; the authorization and lifecycle functions call
-- it so that points move in the same call as money.
local loyalty = {}

local function k_account(tag, id) return 'acct:' .. tag .. ':' .. id end
local function k_holds(tag, id) return 'holds:' .. tag .. ':' .. id end
local function k_hold(tag, auth_id) return 'hold:' .. tag .. ':' .. auth_id end
local function k_expiries(tag) return 'expiries:' .. tag end
local function k_idem(tag, request_id) return 'idem:' .. tag .. ':' .. request_id end
local function k_events(tag) return 'events:' .. tag end
local function k_ledger(tag, id) return 'ledger:' .. tag .. ':' .. id end
local function k_early(tag, request_id) return 'revearly:' .. tag .. ':' .. request_id end
local function k_settle(tag, day) return 'settle:' .. tag .. ':' .. day end

local function ledger(tag, account_id, kind, amount, balance_delta, held_delta, auth_id,
                      request_id, now_ms)
  redis.call('XADD', k_ledger(tag, account_id), '*', 'kind', kind, 'amount', fmt(amount),
             'balance', fmt(balance_delta), 'held', fmt(held_delta), 'auth_id', auth_id,
             'request_id', request_id, 'at_ms', now_ms)
end

-- A hold as a table with its amounts as numbers; nil when absent. A new hold is
-- written without the fields that start at zero or empty (captured, refunded,
-- reversed, closed, updated_ms), the first lifecycle step writes them all.
local function read_hold(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then
    return nil
  end
  local h = {}
  for i = 1, #flat, 2 do
    h[flat[i]] = flat[i + 1]
  end
  for _, f in ipairs({'approved', 'held', 'captured', 'refunded', 'reversed', 'tolerance_bps',
                      'expires_ms', 'max_expires_ms'}) do
    h[f] = tonumber(h[f] or '0')
  end
  return h
end

-- The authorization's status, derived from its amounts.
local function status_of(h)
  if h.held > 0 then
    if h.captured > 0 then return 'partially_captured' end
    return 'held'
  end
  if h.captured > 0 then
    if h.refunded >= h.captured then return 'refunded' end
    if h.refunded > 0 then return 'partially_refunded' end
    return 'captured'
  end
  if h.closed and h.closed ~= '' then return h.closed end
  return 'reversed'
end

-- Release `amount` of a hold from the account and its indexes.
local function release(tag, h, auth_id, amount)
  if h.kind ~= 'points' then  -- a points purchase holds no money
    redis.call('HINCRBY', k_account(tag, h.account_id), 'held', fmt(-amount))
  end
  h.held = h.held - amount
  if h.held == 0 then
    redis.call('ZREM', k_holds(tag, h.account_id), auth_id)
    redis.call('ZREM', k_expiries(tag), auth_id)
  end
end

-- The money ledger entry of a lifecycle step; a points purchase moves no money.
local function money_ledger(tag, h, kind, amount, balance_delta, held_delta, auth_id,
                            request_id, now_ms)
  if h.kind ~= 'points' then
    ledger(tag, h.account_id, kind, amount, balance_delta, held_delta, auth_id, request_id,
           now_ms)
  end
end

local function save_hold(key, h, now_ms)
  redis.call('HSET', key, 'approved', fmt(h.approved), 'held', fmt(h.held),
             'captured', fmt(h.captured), 'refunded', fmt(h.refunded),
             'reversed', fmt(h.reversed), 'expires_ms', fmt(h.expires_ms),
             'closed', h.closed or '', 'updated_ms', now_ms)
end

-- Signed change of the account's balance when `amount` is taken from it (a
-- capture): a deposit's balance falls, a credit line's amount owed rises.
local function debit_delta(account_key, amount)
  if redis.call('HGET', account_key, 'kind') == 'credit' then
    return amount
  end
  return -amount
end

local function lifecycle_event(tag, kind, h, auth_id, request_id, amount, now_ms)
  redis.call('XADD', k_events(tag), '*', 'kind', kind, 'auth_id', auth_id,
             'request_id', request_id, 'account_id', h.account_id,
             'merchant_id', h.merchant_id or '', 'currency', h.currency or '',
             'amount', fmt(amount), 'status', status_of(h), 'at_ms', now_ms)
end

--[[
Lifecycle answers are a fixed list, stored whole in the operation's
idempotency record and returned after 'new' or 'replay':
  status, amount, captured, held, released, over, refunded, reversed,
  operation id, at (ms), authorization id, currency, expires (ms), found ('1'/'0'),
  loyalty points moved (posted by a capture, removed by a release, taken back by a refund)
--]]
local function lifecycle_result(h, auth_id, amount, released, over, op_id, now_ms, found,
                                points)
  if h == nil then
    return {'reversed_before_authorization', '0', '0', '0', '0', '0', '0', '0', op_id, now_ms,
            auth_id, '', '0', found, '0'}
  end
  return {status_of(h), fmt(amount), fmt(h.captured), fmt(h.held), fmt(released), fmt(over),
          fmt(h.refunded), fmt(h.reversed), op_id, now_ms, auth_id, h.currency or '',
          fmt(h.expires_ms), found, fmt(points or 0)}
end

local function store_result(idem_key, fingerprint, result, ttl_ms)
  redis.call('HSET', idem_key, 'fp', fingerprint, 'result', table.concat(result, '|'))
  redis.call('PEXPIRE', idem_key, ttl_ms)
  local reply = {'new'}
  for _, v in ipairs(result) do reply[#reply + 1] = v end
  return reply
end

-- {'replay', ...result} or {'conflict'} when the idempotency record exists.
local function stored_result(idem_key, fingerprint)
  local rec = redis.call('HMGET', idem_key, 'fp', 'result')
  if not rec[1] then
    return nil
  end
  if rec[1] ~= fingerprint or not rec[2] then
    return {'conflict'}
  end
  local reply = {'replay'}
  for v in string.gmatch(rec[2] .. '|', '([^|]*)|') do reply[#reply + 1] = v end
  return reply
end

-- Bind a request_id's claim to a body when it has none yet (as HSETNX would; a
-- claim an early reversal marked has `rev` but no `fp`), with the account it is
-- routed to and the TTL. Returns {fp, stored answer, decided_ms, reversal mark}
-- as they are now: fp is another body's when the id was bound before.
local function bind_claim(claim, fingerprint, account_id, ttl_ms)
  local rec = redis.call('HMGET', claim, 'fp', 'base', 'decided_ms', 'rev')
  if not rec[1] then
    redis.call('HSET', claim, 'fp', fingerprint, 'acct', account_id)
    redis.call('PEXPIRE', claim, ttl_ms)
    rec[1] = fingerprint
  end
  return rec
end

--[[
claim_request: bind a request_id to its request body, in the read pipeline of
Authorize. The claim lives in the request_id's own partition, so a reuse of
the id with another body is seen whichever account the body names; it also
records the account (so a timeout reversal can find the authorization) and
carries the early-reversal mark a reversal leaves when it arrives first.

KEYS: 1 request claim
ARGV: 1 fingerprint, 2 ttl (ms), 3 account id
Returns {fingerprint, stored answer or false, decided_ms or false, reversal mark or false}.
--]]
local function claim_request(keys, args)
  return bind_claim(keys[1], args[1], args[3], args[2])
end

--[[
authorize_commit: re-check the account and funds, place (or raise) the hold,
store the answer, append the ledger entry and the decision event, all at once.

KEYS: 1 account, 2 idempotency record, 3 the request claim (on a single Redis
      only: the commit binds a new request_id there, as claim_request does on a
      cluster in the read, and declines when a reversal marked it first)
ARGV: 1 partition tag, 2 request_id, 3 fingerprint, 4 mode ('hold' to decide
      on funds, 'increment' to raise the hold ARGV[9] names, 'final' to record
      a decision already taken), 5 amount, 6 partial_ok ('1'/'0'), 7 now (ms),
      8 hold expiry (ms), 9 authorization id, 10 idempotency ttl (ms),
      11 response without the funds outcome (serialized AuthorizeResponse),
      12 event without the funds outcome (serialized DecisionEvent),
      13 account id, 14 merchant id, 15 currency, 16 card token, 17 mcc,
      18 over-capture tolerance (basis points), 19 latest expiry an extension may reach (ms),
      20 loyalty (JSON, '' for none: program, member, version, variant, redeem points,
      redeem_value, limits, expiry_ms, plan = the earn plan or false)
Returns {'new', outcome, approved, auth_id, decided_ms, event_id, points},
        {'replay', outcome, approved, auth_id, decided_ms, base, points} or {'conflict'};
points is 'earned|redeemed|value of the points redeemed'.
Outcomes: 'approved', 'partial', 'insufficient', 'account_closed',
'account_frozen', 'account_missing', 'currency_mismatch', 'reversed_early',
'increment_unknown', 'increment_closed', 'points_insufficient',
'points_blocked', 'points_limit', 'points_no_member' and 'final' (the base
response is the whole answer).
--]]
local function authorize_commit(keys, args)
  local account_key, idem_key = keys[1], keys[2]
  local tag, request_id, fingerprint, mode = args[1], args[2], args[3], args[4]
  local amount = tonumber(args[5])
  local partial_ok = args[6] == '1'
  local now_ms, expires_ms = args[7], args[8]
  local auth_id, idem_ttl_ms = args[9], args[10]
  local base, event = args[11], args[12]
  local account_id, merchant_id, currency = args[13], args[14], args[15]

  local rec = redis.call('HMGET', idem_key, 'fp', 'outcome', 'approved', 'auth_id', 'decided_ms',
                         'base', 'points')
  if rec[1] then
    if rec[1] ~= fingerprint or not rec[2] then
      return {'conflict'}
    end
    return {'replay', rec[2], rec[3], rec[4], rec[5], rec[6], rec[7] or '0|0|0'}
  end

  local reversed_first = false
  if keys[3] then
    local claim = bind_claim(keys[3], fingerprint, account_id, idem_ttl_ms)
    if claim[1] ~= fingerprint then
      return {'conflict'}
    end
    reversed_first = claim[4] ~= false
  end

  local outcome, approved = 'final', 0
  local hold, acct = nil, nil
  if mode ~= 'final' then
    acct = redis.call('HMGET', account_key, 'kind', 'status', 'balance', 'limit', 'held',
                      'currency')
    if mode == 'increment' then
      hold = read_hold(k_hold(tag, auth_id))
    end
    if reversed_first or redis.call('EXISTS', k_early(tag, request_id)) == 1 then
      outcome = 'reversed_early'
    elseif not acct[1] then
      outcome = 'account_missing'
    elseif acct[2] == 'closed' then
      outcome = 'account_closed'
    elseif acct[2] ~= 'active' then
      outcome = 'account_frozen'
    elseif mode == 'points' then
      outcome, approved = 'approved', amount  -- paid by the points redeemed below
    elseif acct[6] ~= currency then
      outcome = 'currency_mismatch'
    elseif mode == 'increment' and (hold == nil or hold.account_id ~= account_id) then
      outcome = 'increment_unknown'
    elseif mode == 'increment' and hold.held == 0 then
      outcome = 'increment_closed'
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

  -- Loyalty: the points paying part of the purchase are redeemed first (a refusal
  -- declines the purchase and holds nothing), then the purchase earns, pending
  -- until captured; both are recorded on the hold for its lifecycle.
  local lp = args[20] ~= '' and cjson.decode(args[20]) or nil
  local earned, redeemed, redeem_entry, earn_entry, bonus, progress = 0, 0, '', '', 0, ''
  local member = nil
  if approved > 0 and lp then
    member = loyalty.read_member(tag, lp.program, lp.member)
    if member == nil and lp.redeem > 0 then
      outcome, approved = 'points_no_member', 0
    elseif member ~= nil and lp.redeem > 0 then
      local got, entry, why = loyalty.redeem(
        member, lp.redeem, false, lp.limits,
        {reason = 'paid toward a purchase', req = request_id, auth = auth_id,
         ver = lp.version, var = lp.variant}, now_ms)
      if why then
        outcome, approved = 'points_' .. why, 0
      else
        redeemed, redeem_entry = got, entry
      end
    end
  end
  if approved > 0 and member ~= nil and lp.plan then
    local res = loyalty.earn(member, lp.plan, approved, amount, false, request_id, auth_id,
                             now_ms)
    earned, earn_entry, bonus = res.points, res.entry, res.bonus
    if #res.progress > 0 then progress = cjson.encode(res.progress) end
  end

  if approved > 0 and mode == 'points' then
    -- A purchase paid in points: its hold holds no money (the account's funds and
    -- its money ledger are untouched) but carries the points for its lifecycle.
    redis.call('HSET', k_hold(tag, auth_id),
               'account_id', account_id, 'request_id', request_id, 'card_token', args[16],
               'merchant_id', merchant_id, 'mcc', args[17], 'currency', currency,
               'approved', fmt(approved), 'held', fmt(approved), 'tolerance_bps', '0',
               'created_ms', now_ms, 'expires_ms', expires_ms,
               'max_expires_ms', args[19], 'kind', 'points',
               'l_prog', lp.program, 'l_mem', lp.member, 'l_earn', '0', 'l_earn_entry', '',
               'l_redeem', fmt(redeemed), 'l_redeem_entry', redeem_entry,
               'l_state', 'pending', 'l_expiry_ms', fmt(lp.expiry_ms))
    redis.call('ZADD', k_expiries(tag), expires_ms, auth_id)
  elseif approved > 0 then
    -- `held` as read above: this call is atomic, so one HSET writes the sum.
    redis.call('HSET', account_key, 'held', fmt(tonumber(acct[5]) + approved),
               'updated_ms', now_ms)
    if mode == 'increment' then
      hold.approved = hold.approved + approved
      hold.held = hold.held + approved
      save_hold(k_hold(tag, auth_id), hold, now_ms)
    else
      redis.call('HSET', k_hold(tag, auth_id),
                 'account_id', account_id, 'request_id', request_id, 'card_token', args[16],
                 'merchant_id', merchant_id, 'mcc', args[17], 'currency', currency,
                 'approved', fmt(approved), 'held', fmt(approved),
                 'tolerance_bps', args[18], 'created_ms', now_ms, 'expires_ms', expires_ms,
                 'max_expires_ms', args[19])
      redis.call('ZADD', k_holds(tag, account_id), expires_ms, auth_id)
      redis.call('ZADD', k_expiries(tag), expires_ms, auth_id)
      if member ~= nil then
        redis.call('HSET', k_hold(tag, auth_id), 'l_prog', lp.program, 'l_mem', lp.member,
                   'l_earn', fmt(earned), 'l_earn_entry', earn_entry,
                   'l_redeem', fmt(redeemed), 'l_redeem_entry', redeem_entry,
                   'l_state', 'pending', 'l_expiry_ms', fmt(lp.expiry_ms),
                   'l_bonus', fmt(bonus), 'l_chal', progress,
                   'l_day', lp.plan and fmt(lp.plan.day) or '')
      end
    end
    ledger(tag, account_id, mode == 'increment' and 'increment' or 'hold', approved, 0, approved,
           auth_id, request_id, now_ms)
  else
    -- Nothing held by this request: its answer names no authorization, so a timeout
    -- reversal of it (by request_id) finds nothing to release.
    auth_id = ''
  end

  local points = fmt(earned) .. '|' .. fmt(redeemed) .. '|' ..
                 fmt(redeemed > 0 and lp.redeem_value or 0)
  redis.call('HSET', idem_key, 'fp', fingerprint, 'outcome', outcome, 'approved', fmt(approved),
             'auth_id', auth_id, 'decided_ms', now_ms, 'base', base, 'points', points)
  redis.call('PEXPIRE', idem_key, idem_ttl_ms)
  local event_id = redis.call('XADD', k_events(tag), '*', 'kind', 'authorization',
                              'outcome', outcome, 'approved', fmt(approved), 'auth_id', auth_id,
                              'decided_ms', now_ms, 'event', event, 'points', points)
  return {'new', outcome, fmt(approved), auth_id, now_ms, event_id, points}
end

--[[
record_unrouted: store the answer to a request that reached no account (an
unknown card) on its request_id claim, and append its event to the claim's
partition stream.

KEYS: 1 request claim
ARGV: 1 partition tag, 2 fingerprint, 3 now (ms), 4 idempotency ttl (ms),
      5 response (serialized AuthorizeResponse), 6 event (serialized DecisionEvent)
Returns like authorize_commit.
--]]
local function record_unrouted(keys, args)
  local claim_key = keys[1]
  local tag, fingerprint, now_ms, ttl_ms, base, event =
    args[1], args[2], args[3], args[4], args[5], args[6]
  local rec = redis.call('HMGET', claim_key, 'fp', 'base', 'decided_ms')
  if rec[1] and rec[1] ~= fingerprint then
    return {'conflict'}
  end
  if rec[2] then
    return {'replay', 'final', '0', '', rec[3], rec[2], '0|0|0'}
  end
  redis.call('HSET', claim_key, 'fp', fingerprint, 'base', base, 'decided_ms', now_ms)
  redis.call('PEXPIRE', claim_key, ttl_ms)
  local event_id = redis.call('XADD', k_events(tag), '*', 'kind', 'authorization',
                              'outcome', 'final', 'approved', '0', 'auth_id', '',
                              'decided_ms', now_ms, 'event', event)
  return {'new', 'final', '0', '', now_ms, event_id, '0|0|0'}
end

--[[
capture: move captured money from the hold to posted, within the approved
amount plus the over-capture tolerance fixed when the hold was placed; a
final capture releases what is left of the hold.

KEYS: 1 hold, 2 idempotency record of the capture
ARGV: 1 partition tag, 2 authorization id, 3 request_id, 4 fingerprint,
      5 amount, 6 final ('1'/'0'), 7 now (ms), 8 idempotency ttl (ms),
      9 capture id, 10 settlement day (YYYYMMDD), 11 currency
Returns {'new'|'replay', ...lifecycle result}, {'conflict'} or
{'error', reason, detail}: 'not_found', 'currency_mismatch', 'not_capturable'
(status), 'over_capture' (most that may still be captured).
--]]
local function capture(keys, args)
  local hold_key, idem_key = keys[1], keys[2]
  local tag, auth_id, request_id, fingerprint = args[1], args[2], args[3], args[4]
  local amount, final, now_ms, ttl_ms = tonumber(args[5]), args[6] == '1', args[7], args[8]
  local capture_id, day, currency = args[9], args[10], args[11]

  local previous = stored_result(idem_key, fingerprint)
  if previous then return previous end
  local h = read_hold(hold_key)
  if h == nil then return {'error', 'not_found', ''} end
  if h.currency ~= currency then return {'error', 'currency_mismatch', h.currency} end
  if h.held == 0 then return {'error', 'not_capturable', status_of(h)} end
  if h.kind == 'points' and (amount ~= h.held or not final) then
    return {'error', 'points_whole', fmt(h.held)}
  end
  -- What was reversed is no longer authorized; the tolerance applies to the rest.
  local authorized = h.approved - h.reversed
  local ceiling = authorized + math.floor(authorized * h.tolerance_bps / 10000)
  if h.captured + amount > ceiling then
    return {'error', 'over_capture', fmt(ceiling - h.captured)}
  end

  local account_key = k_account(tag, h.account_id)
  local from_hold = math.min(amount, h.held)
  local over = amount - from_hold
  local balance_delta = 0
  if h.kind ~= 'points' then
    balance_delta = debit_delta(account_key, amount)
    redis.call('HINCRBY', account_key, 'balance', fmt(balance_delta))
  end
  release(tag, h, auth_id, from_hold)
  h.captured = h.captured + amount
  money_ledger(tag, h, 'capture', amount, balance_delta, -from_hold, auth_id, request_id,
               now_ms)
  local released = 0
  if final and h.held > 0 then
    released = h.held
    release(tag, h, auth_id, released)
    money_ledger(tag, h, 'release', released, 0, -released, auth_id, request_id, now_ms)
  end
  redis.call('HSET', account_key, 'updated_ms', now_ms)
  save_hold(hold_key, h, now_ms)
  local points = loyalty.on_hold(tag, h, hold_key, 'capture', 0, 0, request_id, auth_id, now_ms)
  redis.call('RPUSH', k_settle(tag, day), cjson.encode({
    kind = 'capture', merchant_id = h.merchant_id, id = capture_id, authorization_id = auth_id,
    amount_minor = fmt(amount), currency = h.currency, at_ms = now_ms,
    account_id = h.account_id, method = h.kind == 'points' and 'points' or 'account'}))
  lifecycle_event(tag, 'capture', h, auth_id, request_id, amount, now_ms)
  return store_result(idem_key, fingerprint,
                      lifecycle_result(h, auth_id, amount, released, over, capture_id, now_ms,
                                       '1', points), ttl_ms)
end

-- Reverse `amount` (0: all that is held) of a hold; the shared part of both reversals.
local function reverse_hold(tag, hold_key, auth_id, request_id, amount, now_ms)
  local h = read_hold(hold_key)
  if h == nil then return nil, {'error', 'not_found', ''} end
  if h.held == 0 then return nil, {'error', 'not_reversible', status_of(h)} end
  if amount == 0 then amount = h.held end
  if amount > h.held then return nil, {'error', 'over_reversal', fmt(h.held)} end
  if h.kind == 'points' and amount ~= h.held then
    return nil, {'error', 'points_whole', fmt(h.held)}
  end
  release(tag, h, auth_id, amount)
  h.reversed = h.reversed + amount
  if h.held == 0 and h.captured == 0 then h.closed = 'reversed' end
  money_ledger(tag, h, 'reversal', amount, 0, -amount, auth_id, request_id, now_ms)
  redis.call('HSET', k_account(tag, h.account_id), 'updated_ms', now_ms)
  save_hold(hold_key, h, now_ms)
  if h.held == 0 and h.captured == 0 then
    h.points = loyalty.on_hold(tag, h, hold_key, 'release', 0, 0, request_id, auth_id, now_ms)
  end
  lifecycle_event(tag, 'reversal', h, auth_id, request_id, amount, now_ms)
  return h, amount
end

--[[
reverse: reverse all or part of the uncaptured hold of an authorization.

KEYS: 1 hold, 2 idempotency record of the reversal
ARGV: 1 partition tag, 2 authorization id, 3 request_id, 4 fingerprint,
      5 amount (0: all that is held), 6 now (ms), 7 idempotency ttl (ms),
      8 currency of the amount ('' when none was given)
Returns like capture; errors 'not_found', 'currency_mismatch', 'not_reversible' (status),
'over_reversal' (held).
--]]
local function reverse(keys, args)
  local hold_key, idem_key = keys[1], keys[2]
  local tag, auth_id, request_id, fingerprint = args[1], args[2], args[3], args[4]
  local amount, now_ms, ttl_ms, currency = tonumber(args[5]), args[6], args[7], args[8]
  local previous = stored_result(idem_key, fingerprint)
  if previous then return previous end
  if currency ~= '' and redis.call('HGET', hold_key, 'currency') ~= currency then
    local held_in = redis.call('HGET', hold_key, 'currency')
    if held_in then return {'error', 'currency_mismatch', held_in} end
  end
  local h, reversed = reverse_hold(tag, hold_key, auth_id, request_id, amount, now_ms)
  if h == nil then return reversed end
  return store_result(idem_key, fingerprint,
                      lifecycle_result(h, auth_id, reversed, 0, 0, request_id, now_ms, '1',
                                       h.points), ttl_ms)
end

--[[
reverse_lookup: the first step of a reversal that names only the original
request_id. When the authorization's claim knows its account, the reversal
goes on in that partition (reverse_original). Otherwise the authorization has
not been seen: the claim is marked, so that the authorization, when it comes,
is declined, and the reversal is answered now.

KEYS: 1 request claim of the original request_id, 2 the reversal's idempotency
      record in the same partition
ARGV: 1 fingerprint, 2 now (ms), 3 idempotency ttl (ms), 4 reversal request_id
Returns {'route', account_id}, or like capture.
--]]
local function reverse_lookup(keys, args)
  local claim, idem_key = keys[1], keys[2]
  local fingerprint, now_ms, ttl_ms, request_id = args[1], args[2], args[3], args[4]
  local previous = stored_result(idem_key, fingerprint)
  if previous then return previous end
  local account_id = redis.call('HGET', claim, 'acct')
  if account_id then
    return {'route', account_id}
  end
  redis.call('HSET', claim, 'rev', request_id)
  redis.call('PEXPIRE', claim, ttl_ms)
  return store_result(idem_key, fingerprint,
                      lifecycle_result(nil, '', 0, 0, 0, request_id, now_ms, '0'), ttl_ms)
end

--[[
reverse_original: reverse the authorization a request_id received, in its
account's partition. Decided: reverse its hold. Declined: nothing to do. Not
decided yet (claimed, not committed): leave a mark its commit declines on.

KEYS: 1 idempotency record of the original authorization, 2 the reversal's
      idempotency record
ARGV: 1 partition tag, 2 original request_id, 3 reversal request_id,
      4 fingerprint, 5 amount (0: all), 6 now (ms), 7 idempotency ttl (ms)
Returns like capture.
--]]
local function reverse_original(keys, args)
  local original_idem, idem_key = keys[1], keys[2]
  local tag, original_id, request_id, fingerprint = args[1], args[2], args[3], args[4]
  local amount, now_ms, ttl_ms = tonumber(args[5]), args[6], args[7]
  local previous = stored_result(idem_key, fingerprint)
  if previous then return previous end
  local decided = redis.call('HMGET', original_idem, 'outcome', 'auth_id', 'approved')
  if not decided[1] then
    redis.call('SET', k_early(tag, original_id), request_id, 'PX', ttl_ms)
    return store_result(idem_key, fingerprint,
                        lifecycle_result(nil, '', 0, 0, 0, request_id, now_ms, '0'), ttl_ms)
  end
  local auth_id = decided[2]
  if auth_id == '' then
    return store_result(idem_key, fingerprint,
                        {'declined', '0', '0', '0', '0', '0', '0', '0', request_id, now_ms, '',
                         '', '0', '1'}, ttl_ms)
  end
  if amount == 0 then
    -- A full reversal of this request: what it approved (an incremental authorization
    -- approved only its increment), or what is left of it.
    local held = tonumber(redis.call('HGET', k_hold(tag, auth_id), 'held') or '0')
    amount = math.min(tonumber(decided[3]), held)
    if amount == 0 then amount = held end
  end
  local h, reversed = reverse_hold(tag, k_hold(tag, auth_id), auth_id, request_id, amount,
                                   now_ms)
  if h == nil then return reversed end
  return store_result(idem_key, fingerprint,
                      lifecycle_result(h, auth_id, reversed, 0, 0, request_id, now_ms, '1',
                                       h.points), ttl_ms)
end

--[[
refund: credit back all or part of what was captured, never more in total.

KEYS: 1 hold, 2 idempotency record of the refund
ARGV: 1 partition tag, 2 authorization id, 3 request_id, 4 fingerprint,
      5 amount, 6 now (ms), 7 idempotency ttl (ms), 8 refund id,
      9 settlement day (YYYYMMDD), 10 currency
Returns like capture; errors 'not_found', 'currency_mismatch', 'over_refund' (refundable).
--]]
local function refund(keys, args)
  local hold_key, idem_key = keys[1], keys[2]
  local tag, auth_id, request_id, fingerprint = args[1], args[2], args[3], args[4]
  local amount, now_ms, ttl_ms = tonumber(args[5]), args[6], args[7]
  local refund_id, day, currency = args[8], args[9], args[10]
  local previous = stored_result(idem_key, fingerprint)
  if previous then return previous end
  local h = read_hold(hold_key)
  if h == nil then return {'error', 'not_found', ''} end
  if h.currency ~= currency then return {'error', 'currency_mismatch', h.currency} end
  if h.refunded + amount > h.captured then
    return {'error', 'over_refund', fmt(h.captured - h.refunded)}
  end
  local account_key = k_account(tag, h.account_id)
  local balance_delta = 0
  if h.kind ~= 'points' then  -- a points purchase is refunded in points (below)
    balance_delta = -debit_delta(account_key, amount)
    redis.call('HINCRBY', account_key, 'balance', fmt(balance_delta))
  end
  redis.call('HSET', account_key, 'updated_ms', now_ms)
  h.refunded = h.refunded + amount
  save_hold(hold_key, h, now_ms)
  money_ledger(tag, h, 'refund', amount, balance_delta, 0, auth_id, request_id, now_ms)
  local points = loyalty.on_hold(tag, h, hold_key, 'refund', amount, h.captured, request_id,
                                 auth_id, now_ms)
  redis.call('RPUSH', k_settle(tag, day), cjson.encode({
    kind = 'refund', merchant_id = h.merchant_id, id = refund_id, authorization_id = auth_id,
    amount_minor = fmt(amount), currency = h.currency, at_ms = now_ms,
    account_id = h.account_id, method = h.kind == 'points' and 'points' or 'account'}))
  lifecycle_event(tag, 'refund', h, auth_id, request_id, amount, now_ms)
  return store_result(idem_key, fingerprint,
                      lifecycle_result(h, auth_id, amount, 0, 0, refund_id, now_ms, '1', points),
                      ttl_ms)
end

--[[
extend: move a hold's expiry later, up to the latest expiry fixed when it was placed.

KEYS: 1 hold, 2 idempotency record of the extension
ARGV: 1 partition tag, 2 authorization id, 3 request_id, 4 fingerprint,
      5 new expiry (ms), 6 now (ms), 7 idempotency ttl (ms)
Returns like capture; errors 'not_found', 'not_extendable' (status),
'beyond_maximum' (latest expiry, ms), 'earlier' (current expiry, ms).
--]]
local function extend(keys, args)
  local hold_key, idem_key = keys[1], keys[2]
  local tag, auth_id, request_id, fingerprint = args[1], args[2], args[3], args[4]
  local new_expiry, now_ms, ttl_ms = tonumber(args[5]), args[6], args[7]
  local previous = stored_result(idem_key, fingerprint)
  if previous then return previous end
  local h = read_hold(hold_key)
  if h == nil then return {'error', 'not_found', ''} end
  if h.held == 0 then return {'error', 'not_extendable', status_of(h)} end
  if new_expiry > h.max_expires_ms then
    return {'error', 'beyond_maximum', fmt(h.max_expires_ms)}
  end
  if new_expiry < h.expires_ms then return {'error', 'earlier', fmt(h.expires_ms)} end
  h.expires_ms = new_expiry
  save_hold(hold_key, h, now_ms)
  redis.call('ZADD', k_holds(tag, h.account_id), fmt(new_expiry), auth_id)
  redis.call('ZADD', k_expiries(tag), fmt(new_expiry), auth_id)
  return store_result(idem_key, fingerprint,
                      lifecycle_result(h, auth_id, 0, 0, 0, request_id, now_ms, '1'), ttl_ms)
end

--[[
expire: release a hold whose expiry has passed. Any number of sweepers may
call it for the same hold at once: the first releases it, the others find
nothing held and only tidy the index.

KEYS: 1 the partition's expiries index
ARGV: 1 partition tag, 2 authorization id, 3 now (ms)
Returns 'expired', 'gone' or 'not_due'.
--]]
local function expire(keys, args)
  local expiries_key = keys[1]
  local tag, auth_id, now_ms = args[1], args[2], args[3]
  local h = read_hold(k_hold(tag, auth_id))
  if h == nil or h.held == 0 then
    redis.call('ZREM', expiries_key, auth_id)
    return 'gone'
  end
  if h.expires_ms > tonumber(now_ms) then
    redis.call('ZADD', expiries_key, fmt(h.expires_ms), auth_id)
    return 'not_due'
  end
  local amount = h.held
  release(tag, h, auth_id, amount)
  if h.captured == 0 then h.closed = 'expired' end
  money_ledger(tag, h, 'expiry', amount, 0, -amount, auth_id, '', now_ms)
  redis.call('HSET', k_account(tag, h.account_id), 'updated_ms', now_ms)
  save_hold(k_hold(tag, auth_id), h, now_ms)
  if h.captured == 0 then
    loyalty.on_hold(tag, h, k_hold(tag, auth_id), 'release', 0, 0, '', auth_id, now_ms)
  end
  lifecycle_event(tag, 'expiry', h, auth_id, '', amount, now_ms)
  return 'expired'
end

--[[
upsert_account: create an account or update its status, balance and limit.
Kind and currency are fixed at creation; held is only ever moved by holds. A
change of balance is a ledger entry like any other movement.

KEYS: 1 account
ARGV: 1 kind, 2 status, 3 currency, 4 balance, 5 limit, 6 now (ms),
      7 partition tag, 8 account id, 9 request id (for the ledger)
Returns {'created' or 'updated', kind, status, currency, balance, limit, held,
updated_ms} or an error naming the field that may not change.
--]]
local function upsert_account(keys, args)
  local key = keys[1]
  local kind, status, currency, balance, limit, now_ms =
    args[1], args[2], args[3], args[4], args[5], args[6]
  local tag, account_id = args[7], args[8]
  local cur = redis.call('HMGET', key, 'kind', 'currency', 'balance')
  local verb = 'updated'
  local previous = 0
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
    previous = tonumber(cur[3])
  end
  redis.call('HSET', key, 'status', status, 'balance', balance, 'limit', limit,
             'updated_ms', now_ms)
  local delta = tonumber(balance) - previous
  if delta ~= 0 or verb == 'created' then
    ledger(tag, account_id, 'balance_set', tonumber(balance), delta, 0, '', args[9], now_ms)
  end
  local acct = redis.call('HMGET', key, 'kind', 'status', 'currency', 'balance', 'limit', 'held',
                          'updated_ms')
  return {verb, acct[1], acct[2], acct[3], acct[4], acct[5], acct[6], acct[7]}
end

-- The id of a stream's latest entry, '0-0' when it has none.
local function last_entry_id(key)
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  return #last > 0 and last[1][1] or '0-0'
end

--[[
account_books: an account's stored balance and held amount, what its active holds
still hold, and the id of its latest ledger entry, read in one atomic call.
`payauth reconcile` compares them while traffic and the expiry sweeper keep moving
money: read in separate commands, a hold released between two reads would look like
a difference in the books. The ledger is append-only and every movement appends its
entry in the same call as the change, so the account as read here is exactly the sum
of the entries up to that id, which the caller then reads at leisure, in pages,
without holding Redis. Read-only; O(active holds).

KEYS: 1 account, 2 its ledger, 3 its active holds
ARGV: 1 partition tag
Returns {} when the account does not exist, else {balance, held, holds held,
latest ledger entry id}.
--]]
local function account_books(keys, args)
  local acct = redis.call('HMGET', keys[1], 'balance', 'held')
  if not acct[1] then
    return {}
  end
  local holds_held = 0
  for _, auth_id in ipairs(redis.call('ZRANGE', keys[3], 0, -1)) do
    holds_held = holds_held + tonumber(redis.call('HGET', k_hold(args[1], auth_id), 'held') or '0')
  end
  return {acct[1], acct[2], fmt(holds_held), last_entry_id(keys[2])}
end

--[[
config_put: make a policy or scoring model the active one, if its version is
newer, and tell every worker (PUBLISH) so each swaps it in.

KEYS: 1 the configuration hash ('{config}:policy' or '{config}:model')
ARGV: 1 version, 2 content hash, 3 payload (serialized request), 4 now (ms),
      5 notification channel, 6 what changed ('policy' or 'model')
Returns {'stored', previous version}, {'replayed', version} (the same content
again) or {'stale', active version}.
--]]
local function config_put(keys, args)
  local cur = redis.call('HMGET', keys[1], 'version', 'hash')
  local version = tonumber(args[1])
  if cur[1] then
    if version == tonumber(cur[1]) and cur[2] == args[2] then return {'replayed', cur[1]} end
    if version <= tonumber(cur[1]) then return {'stale', cur[1]} end
  end
  redis.call('HSET', keys[1], 'version', args[1], 'hash', args[2], 'payload', args[3],
             'at_ms', args[4])
  redis.call('PUBLISH', args[5], args[6])
  return {'stored', cur[1] or '0'}
end

redis.register_function('payauth_config_put', config_put)
redis.register_function('payauth_claim_request', claim_request)
redis.register_function('payauth_authorize_commit', authorize_commit)
redis.register_function('payauth_record_unrouted', record_unrouted)
redis.register_function('payauth_capture', capture)
redis.register_function('payauth_reverse', reverse)
redis.register_function('payauth_reverse_lookup', reverse_lookup)
redis.register_function('payauth_reverse_original', reverse_original)
redis.register_function('payauth_refund', refund)
redis.register_function('payauth_extend', extend)
redis.register_function('payauth_expire', expire)
redis.register_function('payauth_upsert_account', upsert_account)
redis.register_function{function_name = 'payauth_account_books', callback = account_books,
                        flags = {'no-writes'}}
