--[[
The loyalty part of the payauth Function library (appended to payauth.lua
when the library is loaded, so the authorization commit and the lifecycle
functions call it in the same atomic call as the hold).

A member's keys all live in one partition `{pN}`: the partition of its linked
account when it has one (so a purchase's hold and its points move in one
call), otherwise the partition of its member id. Keys, for tag T, program P
and member M:
  lmem:T:P:M       HASH   account_id, available, pending, earned, redeemed, seq,
                          state, state_reason, state_ms, birth_month, enrolled_ms
  lled:T:P:M       STREAM the member's points ledger (append-only)
  lq:T:P:M         HASH   qualifying points per UTC day number (tiers)
  lcap:T:P:M:D     HASH   points each rule added on UTC day D (per-day caps)
  lch:T:P:M        HASH   challenge progress and completions
  lday:T:P:M:D     HASH   points earned and redeemed on UTC day D (abuse limits)
  lrdm:T:P:M       ZSET   redemptions of the last hour (abuse limits)
  llots:T:P:M      ZSET   lots of available points by expiry (ms); llot:T:P:M holds
                          what is left of each
  lidem:T:P:R      HASH   the stored answer of Earn/Redeem/Adjust request R
  lexp:T           ZSET   members of the partition with lots, by earliest expiry
  lidx:T':P:M      STRING the partition of member M (in the partition of M itself)
  lfig:T:P         HASH   the partition's program figures per A/B variant ('-' without
                          a test): members, issued, redeemed, expired, adjusted_in,
                          adjusted_out, reversed, available, pending
  lact:T:P:V       ZSET   members of variant V by their latest ledger entry (ms)

Every change of a balance is a ledger entry whose `avail` and `pend` fields
are the change it made to `available` and `pending`: the balance is the sum of
its ledger, which `payauth reconcile` and the tests check.
--]]

local function k_member(tag, p, m) return 'lmem:' .. tag .. ':' .. p .. ':' .. m end
local function k_lledger(tag, p, m) return 'lled:' .. tag .. ':' .. p .. ':' .. m end
local function k_qual(tag, p, m) return 'lq:' .. tag .. ':' .. p .. ':' .. m end
local function k_caps(tag, p, m, day) return 'lcap:' .. tag .. ':' .. p .. ':' .. m .. ':' .. day end
local function k_chal(tag, p, m) return 'lch:' .. tag .. ':' .. p .. ':' .. m end
local function k_lday(tag, p, m, day) return 'lday:' .. tag .. ':' .. p .. ':' .. m .. ':' .. day end
local function k_rdm(tag, p, m) return 'lrdm:' .. tag .. ':' .. p .. ':' .. m end
local function k_lots(tag, p, m) return 'llots:' .. tag .. ':' .. p .. ':' .. m end
local function k_lot(tag, p, m) return 'llot:' .. tag .. ':' .. p .. ':' .. m end
local function k_lidem(tag, p, r) return 'lidem:' .. tag .. ':' .. p .. ':' .. r end
local function k_lexp(tag) return 'lexp:' .. tag end
local function k_fig(tag, p) return 'lfig:' .. tag .. ':' .. p end
local function k_active(tag, p, v) return 'lact:' .. tag .. ':' .. p .. ':' .. v end

local DAY_MS = 86400000
local HOUR_MS = 3600000

local function read_member(tag, p, m)
  local flat = redis.call('HGETALL', k_member(tag, p, m))
  if #flat == 0 then
    return nil
  end
  local r = {program = p, id = m, tag = tag}
  for i = 1, #flat, 2 do
    r[flat[i]] = flat[i + 1]
  end
  for _, f in ipairs({'available', 'pending', 'earned', 'redeemed', 'seq'}) do
    r[f] = tonumber(r[f] or '0')
  end
  return r
end

local function save_member(r, now_ms)
  redis.call('HSET', k_member(r.tag, r.program, r.id), 'available', fmt(r.available),
             'pending', fmt(r.pending), 'earned', fmt(r.earned), 'redeemed', fmt(r.redeemed),
             'seq', fmt(r.seq), 'updated_ms', now_ms)
end

--[[
Append one ledger entry and apply its changes to the member table `r`.
e: kind, points, avail (change of available), pend (change of pending),
earned and redeemed (changes of the lifetime totals), and optional reason,
req, ver, rules, ch, auth, rel, var, exp. The entry carries the balance after
it, so a watcher needs nothing else to show it.
--]]
-- The program figures an entry moves, by kind: what the points count as.
local function count_figures(r, e, avail, pend, now_ms)
  local v = (e.var and e.var ~= '') and e.var or ((r.variant and r.variant ~= '') and r.variant
                                                  or '-')
  local key = k_fig(r.tag, r.program)
  local kind, points = e.kind, e.points
  if (kind == 'EARN_POSTED' or kind == 'BONUS') and avail > 0 then
    redis.call('HINCRBY', key, v .. ':issued', fmt(avail))
  elseif kind == 'REDEEM' then
    redis.call('HINCRBY', key, v .. ':redeemed', fmt(-points))
  elseif kind == 'EXPIRE' then
    redis.call('HINCRBY', key, v .. ':expired', fmt(-points))
  elseif kind == 'ADJUST' then
    redis.call('HINCRBY', key, v .. (points > 0 and ':adjusted_in' or ':adjusted_out'),
               fmt(math.abs(points)))
  elseif kind == 'REVERSE' and avail > 0 then
    redis.call('HINCRBY', key, v .. ':redeemed', fmt(-avail))  -- a redemption restored
  elseif kind == 'REVERSE' and avail < 0 then
    redis.call('HINCRBY', key, v .. ':reversed', fmt(-avail))  -- posted points taken back
  end
  if avail ~= 0 then redis.call('HINCRBY', key, v .. ':available', fmt(avail)) end
  if pend ~= 0 then redis.call('HINCRBY', key, v .. ':pending', fmt(pend)) end
  redis.call('ZADD', k_active(r.tag, r.program, v), now_ms, r.id)
end

local function append_entry(r, e, now_ms)
  local avail, pend = e.avail or 0, e.pend or 0
  r.available = r.available + avail
  r.pending = r.pending + pend
  r.earned = r.earned + (e.earned or 0)
  r.redeemed = r.redeemed + (e.redeemed or 0)
  r.seq = r.seq + 1
  count_figures(r, e, avail, pend, now_ms)
  local fields = {'XADD', k_lledger(r.tag, r.program, r.id), '*',
                  'kind', e.kind, 'points', fmt(e.points), 'avail', fmt(avail),
                  'pend', fmt(pend), 'avail_after', fmt(r.available),
                  'pend_after', fmt(r.pending), 'earned_after', fmt(r.earned),
                  'redeemed_after', fmt(r.redeemed), 'state', r.state or 'active',
                  'ver', fmt(e.ver or 0), 'seq', fmt(r.seq), 'at', now_ms}
  -- Optional fields only when they say something: a stream entry costs by its fields.
  for _, name in ipairs({'reason', 'req', 'rules', 'ch', 'auth', 'rel', 'var'}) do
    if e[name] and e[name] ~= '' then
      fields[#fields + 1] = name
      fields[#fields + 1] = e[name]
    end
  end
  if e.exp then
    fields[#fields + 1] = 'exp'
    fields[#fields + 1] = fmt(e.exp)
  end
  return redis.call(unpack(fields))
end

-- A change of state (suspension) as a ledger record without points, so that
-- WatchBalance sees it in order with the entries.
local function append_state(r, now_ms)
  return redis.call('XADD', k_lledger(r.tag, r.program, r.id), '*', 'kind', 'STATE',
                    'points', '0', 'avail', '0', 'pend', '0',
                    'avail_after', fmt(r.available), 'pend_after', fmt(r.pending),
                    'earned_after', fmt(r.earned), 'redeemed_after', fmt(r.redeemed),
                    'state', r.state, 'reason', r.state_reason or '', 'seq', fmt(r.seq),
                    'at', now_ms)
end

local function set_state(r, state, reason, now_ms)
  r.state, r.state_reason = state, reason
  redis.call('HSET', k_member(r.tag, r.program, r.id), 'state', state, 'state_reason', reason,
             'state_ms', now_ms)
  append_state(r, now_ms)
end

-- Keep the member in the partition's expiry index at its earliest lot, or out of
-- it when it has none.
local function index_lots(r)
  local first = redis.call('ZRANGE', k_lots(r.tag, r.program, r.id), 0, 0, 'WITHSCORES')
  if #first == 0 then
    redis.call('ZREM', k_lexp(r.tag), r.program .. '\t' .. r.id)
  else
    redis.call('ZADD', k_lexp(r.tag), first[2], r.program .. '\t' .. r.id)
  end
end

-- A credit of available points becomes a lot that expires after `expiry_days`.
local function add_lot(r, lot_id, points, expires_ms)
  if expires_ms <= 0 or points <= 0 then
    return
  end
  redis.call('ZADD', k_lots(r.tag, r.program, r.id), expires_ms, lot_id)
  redis.call('HSET', k_lot(r.tag, r.program, r.id), lot_id, fmt(points))
  index_lots(r)
end

-- Take `points` from the lots, oldest expiry first (FIFO); what no lot covers
-- is simply not backed by a lot (points that never expire, or a debt).
local function consume_lots(r, points)
  local zkey, hkey = k_lots(r.tag, r.program, r.id), k_lot(r.tag, r.program, r.id)
  while points > 0 do
    local first = redis.call('ZRANGE', zkey, 0, 0)
    if #first == 0 then
      break
    end
    local lot = first[1]
    local left = tonumber(redis.call('HGET', hkey, lot) or '0')
    if left > points then
      redis.call('HSET', hkey, lot, fmt(left - points))
      points = 0
    else
      points = points - left
      redis.call('ZREM', zkey, lot)
      redis.call('HDEL', hkey, lot)
    end
  end
  index_lots(r)
end

-- Credit posted points to available: the entry, the lot, lifetime earned.
local function credit_available(r, e, expiry_ms, now_ms)
  e.avail = (e.avail or 0) + e.points
  if not e.from_pending then
    e.earned = e.points  -- a pending earn counted toward lifetime when it was earned
  end
  if e.exp == nil and expiry_ms > 0 then
    e.exp = tonumber(now_ms) + expiry_ms
  end
  local id = append_entry(r, e, now_ms)
  add_lot(r, id, e.points, e.exp or 0)
  return id
end

--[[
Qualifying points: one bucket per day (`lq`), and on the member the sum over
the window of `qwin` days that ends with day `qday` (`qsum`), where `qday` is
the latest day ever counted (no bucket is later). The sum over a window that
ends on a later day is the kept sum less the buckets that left the window:
O(days moved) instead of O(days kept). Anything else scans the buckets.
--]]
local function qualifying(r, day, days)
  local qd, qw = tonumber(r.qday or ''), tonumber(r.qwin or '')
  local key = k_qual(r.tag, r.program, r.id)
  if qd == nil or qw ~= days or day < qd or day - qd >= days then
    local sum = 0
    local buckets = redis.call('HGETALL', key)
    for i = 1, #buckets, 2 do
      local d = tonumber(buckets[i])
      if d <= day and d > day - days then sum = sum + tonumber(buckets[i + 1]) end
    end
    return sum
  end
  local sum = tonumber(r.qsum or '0')
  local gone = {}
  for d = qd - days + 1, day - days do gone[#gone + 1] = fmt(d) end
  if #gone > 0 then
    for _, v in ipairs(redis.call('HMGET', key, unpack(gone))) do
      if v then sum = sum - tonumber(v) end
    end
  end
  return sum
end

-- Count `points` (negative to take back) on `day` toward tiers, keeping the sum.
local function add_qualifying(r, day, points, window_days)
  if points == 0 then
    return
  end
  day = tonumber(day)
  local target = day
  if r.qday and r.qday ~= '' and tonumber(r.qday) > day then target = tonumber(r.qday) end
  local sum = qualifying(r, target, window_days)  -- before this change
  if day <= target and day > target - window_days then sum = sum + points end
  local key = k_qual(r.tag, r.program, r.id)
  redis.call('HINCRBY', key, day, fmt(points))
  if redis.call('HLEN', key) > window_days + 8 then
    for _, d in ipairs(redis.call('HKEYS', key)) do
      if tonumber(d) <= day - window_days - 2 then
        redis.call('HDEL', key, d)
      end
    end
  end
  r.qsum, r.qday, r.qwin = fmt(sum), fmt(target), fmt(window_days)
  redis.call('HSET', k_member(r.tag, r.program, r.id), 'qsum', r.qsum, 'qday', r.qday,
             'qwin', r.qwin)
end

-- Points added by one abuse-limited activity today; true when `limit` would be
-- exceeded by `points` more.
local function over_day_limit(r, day, field, points, limit)
  if limit <= 0 then
    return false
  end
  local used = tonumber(redis.call('HGET', k_lday(r.tag, r.program, r.id, day), field) or '0')
  return used + points > limit
end

local function count_day(r, day, field, points)
  local key = k_lday(r.tag, r.program, r.id, day)
  redis.call('HINCRBY', key, field, fmt(points))
  redis.call('PEXPIRE', key, 3 * DAY_MS)
end

loyalty.read_member = read_member

--[[
Earn under a plan computed by the server from the program (plan fields:
program, version, variant, day, base, rules = {{id, points, day_cap, uncapped,
txn_cap}},
challenges = {{key, id, increment, target, bonus, max_completions, is_amount}},
qual_days, expiry_ms, earn_limit), scaled by `share` = approved / asked for
a partial approval (1 otherwise). Caps per day and challenge progress are
applied here, atomically with the purchase. `post` puts the points in
available at once; otherwise they are pending (an authorization).
Returns {points, fired rule ids, completed challenge ids, bonus points,
entry id (or ''), state}.
--]]
function loyalty.earn(r, plan, share_num, share_den, post, req, auth, now_ms)
  local result = {points = 0, rules = {}, completed = {}, bonus = 0, entry = ''}
  if r.state == 'suspended' or r.state == 'closed' then
    result.refused = r.state
    return result
  end
  if plan.variant ~= '' and r.variant ~= plan.variant then
    r.variant = plan.variant  -- an A/B test started after the member enrolled
    redis.call('HSET', k_member(r.tag, r.program, r.id), 'variant', plan.variant)
  end
  local function scaled(points)
    if share_num == share_den then return points end
    return math.floor(points * share_num / share_den)
  end
  local total = scaled(plan.base)
  local caps_key = k_caps(r.tag, r.program, r.id, plan.day)
  for _, rule in ipairs(plan.rules) do
    -- A multiplier's extra follows the amount approved, then its per-purchase cap; a
    -- fixed bonus is the purchase's whatever the amount.
    local id, points, day_cap = rule[1], rule[2], rule[3]
    if share_num ~= share_den and rule[4] > 0 then
      points = scaled(rule[4])
      if rule[5] > 0 and points > rule[5] then points = rule[5] end
    end
    if day_cap > 0 and points > 0 then
      local used = tonumber(redis.call('HGET', caps_key, id) or '0')
      if points > day_cap - used then
        points = math.max(day_cap - used, 0)
      end
      if points > 0 then
        redis.call('HINCRBY', caps_key, id, fmt(points))
        redis.call('PEXPIRE', caps_key, 3 * DAY_MS)
      end
    end
    if points > 0 then
      total = total + points
      result.rules[#result.rules + 1] = id
    end
  end
  -- Challenge progress; `result.progress` remembers what this purchase did to it,
  -- so that a reversal of the purchase can undo exactly that.
  local chal_key = k_chal(r.tag, r.program, r.id)
  local bonuses = {}
  result.progress = {}
  for _, c in ipairs(plan.challenges) do
    -- A partial approval counts as a purchase, and as the amount approved.
    local key, id, target, bonus, max_done = c[1], c[2], c[4], c[5], c[6]
    local increment = c[7] == 1 and scaled(c[3]) or c[3]
    local done = tonumber(redis.call('HGET', chal_key, key .. '#done') or '0')
    if done < max_done and increment > 0 then
      local progress = redis.call('HINCRBY', chal_key, key, fmt(increment))
      local completed = progress >= target
      if completed then
        redis.call('HSET', chal_key, key .. '#done', fmt(done + 1), key, '0')
        bonuses[#bonuses + 1] = {id, bonus}
        result.completed[#result.completed + 1] = id
        result.bonus = result.bonus + bonus
      end
      result.progress[#result.progress + 1] = {key, increment, progress - increment,
                                               completed and 1 or 0}
    end
  end
  local e = {kind = post and 'EARN_POSTED' or 'EARN_PENDING', points = total,
             reason = 'purchase', req = req, ver = plan.version,
             rules = table.concat(result.rules, ','), auth = auth, var = plan.variant}
  if total > 0 then
    if post then
      result.entry = credit_available(r, e, plan.expiry_ms, now_ms)
    else
      e.pend, e.earned = total, total
      result.entry = append_entry(r, e, now_ms)
    end
  end
  -- A challenge bonus goes the way of the purchase that completed it: posted now for a
  -- posted earn, pending with an authorization until its capture.
  for _, b in ipairs(bonuses) do
    local be = {kind = 'BONUS', points = b[2], reason = 'challenge completed', req = req,
                ver = plan.version, ch = b[1], auth = auth, var = plan.variant}
    if post then
      credit_available(r, be, plan.expiry_ms, now_ms)
    else
      be.pend, be.earned = b[2], b[2]
      append_entry(r, be, now_ms)
    end
  end
  result.points = total
  add_qualifying(r, plan.day, total + result.bonus, plan.qual_days)
  if plan.earn_limit > 0 then
    if over_day_limit(r, plan.day, 'earned', total + result.bonus, plan.earn_limit)
        and r.state == 'active' then
      set_state(r, 'fraud_hold', 'daily earn limit exceeded', now_ms)
    end
    count_day(r, plan.day, 'earned', total + result.bonus)
  end
  save_member(r, now_ms)
  return result
end

--[[
Redeem `points` (all of them, or what is available when `partial`), under
the abuse limits (limits: day, day_limit, hour_limit). Returns
{redeemed, entry id} or {0, '', reason}: 'blocked', 'insufficient', 'limit'.
--]]
function loyalty.redeem(r, points, partial, limits, e, now_ms)
  if r.state ~= 'active' then
    return 0, '', 'blocked'
  end
  if r.available < points then
    if partial and r.available > 0 then
      points = r.available
    else
      return 0, '', 'insufficient'
    end
  end
  local rdm_key = k_rdm(r.tag, r.program, r.id)
  if limits.hour_limit > 0 then
    redis.call('ZREMRANGEBYSCORE', rdm_key, '-inf', tonumber(now_ms) - HOUR_MS)
    if redis.call('ZCARD', rdm_key) >= limits.hour_limit then
      set_state(r, 'fraud_hold', 'hourly redemption limit exceeded', now_ms)
      save_member(r, now_ms)
      return 0, '', 'limit'
    end
  end
  if over_day_limit(r, limits.day, 'redeemed', points, limits.day_limit) then
    set_state(r, 'fraud_hold', 'daily redemption limit exceeded', now_ms)
    save_member(r, now_ms)
    return 0, '', 'limit'
  end
  e.kind, e.points, e.avail, e.redeemed = 'REDEEM', -points, -points, points
  local id = append_entry(r, e, now_ms)
  consume_lots(r, points)
  if limits.hour_limit > 0 then
    redis.call('ZADD', rdm_key, now_ms, id)
    redis.call('PEXPIRE', rdm_key, HOUR_MS)
  end
  if limits.day_limit > 0 then
    count_day(r, limits.day, 'redeemed', points)
  end
  save_member(r, now_ms)
  return points, id
end

--[[
The loyalty side of an authorization's lifecycle, from the hold's fields
(l_prog, l_mem, l_earn, l_earn_entry, l_redeem, l_redeem_entry, l_taken):
'capture' posts its pending earn; 'release' (reversal or expiry of a hold
never captured) removes the pending earn and gives back redeemed points;
'refund' takes back posted points in proportion (numerator, denominator).
Returns the points moved (posted, removed or taken back).
--]]
function loyalty.on_hold(tag, h, hold_key, what, num, den, req, auth_id, now_ms)
  if not h.l_mem or h.l_mem == '' then
    return 0
  end
  local r = read_member(tag, h.l_prog, h.l_mem)
  if r == nil then
    return 0
  end
  local earn = tonumber(h.l_earn or '0')
  local moved = 0
  local expiry_ms = tonumber(h.l_expiry_ms or '0')
  local bonus = tonumber(h.l_bonus or '0')
  if what == 'capture' and h.l_state == 'pending' then
    if earn > 0 then
      credit_available(r, {kind = 'EARN_POSTED', points = earn, pend = -earn, from_pending = true,
                           reason = 'purchase captured', req = req, auth = auth_id,
                           rel = h.l_earn_entry}, expiry_ms, now_ms)
    end
    if bonus > 0 then
      credit_available(r, {kind = 'BONUS', points = bonus, pend = -bonus, from_pending = true,
                           reason = 'challenge bonus posted', req = req, auth = auth_id},
                       expiry_ms, now_ms)
    end
    moved = earn + bonus
    redis.call('HSET', hold_key, 'l_state', 'posted')
  elseif what == 'release' and h.l_state == 'pending' then
    if earn + bonus > 0 then
      append_entry(r, {kind = 'REVERSE', points = -(earn + bonus), pend = -(earn + bonus),
                       earned = -(earn + bonus), reason = 'purchase reversed', req = req,
                       auth = auth_id, rel = h.l_earn_entry}, now_ms)
      if h.l_day and h.l_day ~= '' and
          redis.call('HEXISTS', k_qual(r.tag, r.program, r.id), h.l_day) == 1 then
        add_qualifying(r, h.l_day, -(earn + bonus), tonumber(r.qwin or '0') or 0)
      end
    end
    -- Undo what the purchase did to challenges: a completion it made is taken back and
    -- the progress it found restored, under what later purchases added.
    local chal_key = k_chal(r.tag, r.program, r.id)
    for _, c in ipairs(h.l_chal and h.l_chal ~= '' and cjson.decode(h.l_chal) or {}) do
      local key, increment, before, completed = c[1], c[2], c[3], c[4]
      if completed == 1 then
        redis.call('HINCRBY', chal_key, key .. '#done', -1)
        redis.call('HINCRBY', chal_key, key, fmt(before))
      elseif tonumber(redis.call('HGET', chal_key, key) or '0') >= increment then
        redis.call('HINCRBY', chal_key, key, fmt(-increment))
      end
    end
    local redeemed = tonumber(h.l_redeem or '0')
    if redeemed > 0 then
      append_entry(r, {kind = 'REVERSE', points = redeemed, avail = redeemed,
                       redeemed = -redeemed, reason = 'redemption restored', req = req,
                       auth = auth_id, rel = h.l_redeem_entry}, now_ms)
      add_lot(r, h.l_redeem_entry, redeemed, expiry_ms > 0 and tonumber(now_ms) + expiry_ms or 0)
    end
    moved = earn + bonus
    redis.call('HSET', hold_key, 'l_state', 'released')
  elseif what == 'refund' and h.kind == 'points' then
    -- A purchase paid in points is refunded in points, in proportion.
    local redeemed, given = tonumber(h.l_redeem or '0'), tonumber(h.l_taken or '0')
    local give = math.min(math.floor(redeemed * num / den), redeemed - given)
    if give > 0 then
      local id = append_entry(r, {kind = 'REVERSE', points = give, avail = give,
                                  redeemed = -give, reason = 'purchase refunded', req = req,
                                  auth = auth_id, rel = h.l_redeem_entry}, now_ms)
      add_lot(r, id, give, expiry_ms > 0 and tonumber(now_ms) + expiry_ms or 0)
      redis.call('HSET', hold_key, 'l_taken', fmt(given + give))
    end
    moved = give
  elseif what == 'refund' and h.l_state == 'posted' and earn > 0 then
    local taken = tonumber(h.l_taken or '0')
    local take = math.min(math.floor(earn * num / den), earn - taken)
    if take > 0 then
      append_entry(r, {kind = 'REVERSE', points = -take, avail = -take, earned = -take,
                       reason = 'purchase refunded', req = req, auth = auth_id,
                       rel = h.l_earn_entry}, now_ms)
      consume_lots(r, take)
      redis.call('HSET', hold_key, 'l_taken', fmt(taken + take))
    end
    moved = take
  else
    return 0
  end
  save_member(r, now_ms)
  return moved
end

-- When the member's next lots expire (ms, '0' for never) and their points.
local function next_expiry(r)
  local lots = redis.call('ZRANGE', k_lots(r.tag, r.program, r.id), 0, 9, 'WITHSCORES')
  if #lots == 0 then
    return '0', '0'
  end
  local expiring = 0
  for i = 1, #lots, 2 do
    if lots[i + 1] == lots[2] then
      expiring = expiring + tonumber(redis.call('HGET', k_lot(r.tag, r.program, r.id),
                                                lots[i]) or '0')
    end
  end
  return lots[2], fmt(math.min(expiring, math.max(r.available, 0)))
end

-- The balance fields returned by the loyalty functions, in a fixed order.
local function balance_of(r)
  local next_at, expiring = next_expiry(r)
  return {fmt(r.available), fmt(r.pending), fmt(r.earned), fmt(r.redeemed), fmt(r.seq),
          r.state or 'active', r.state_reason or '', r.state_ms or '0', r.account_id or '',
          r.birth_month or '0', r.enrolled_ms or '0', next_at, expiring}
end

local function reply_with(head, r)
  for _, v in ipairs(balance_of(r)) do head[#head + 1] = v end
  return head
end

--[[
loyalty_enroll: create a member or update its profile.
KEYS: 1 member
ARGV: 1 tag, 2 program, 3 member, 4 account id ('' for none), 5 birth month,
      6 now (ms), 7 A/B variant ('' without a test)
Returns {'created'|'updated', ...balance} or {'error', reason}: 'account_missing',
'account_taken' (linked to another member), 'account_fixed' (the member's
account cannot change).
--]]
local function loyalty_enroll(keys, args)
  local tag, p, m, account_id, birth_month, now_ms =
    args[1], args[2], args[3], args[4], args[5], args[6]
  local r = read_member(tag, p, m)
  if r and (r.account_id or '') ~= account_id then
    return {'error', 'account_fixed'}
  end
  if account_id ~= '' and not r then
    local acct = k_account(tag, account_id)
    if redis.call('EXISTS', acct) == 0 then
      return {'error', 'account_missing'}
    end
    local link = redis.call('HMGET', acct, 'loyalty_program', 'loyalty_member')
    if link[1] and (link[1] ~= p or link[2] ~= m) then
      return {'error', 'account_taken'}
    end
    redis.call('HSET', acct, 'loyalty_program', p, 'loyalty_member', m)
  end
  local status = 'updated'
  if not r then
    status = 'created'
    redis.call('HSET', k_member(tag, p, m), 'account_id', account_id, 'available', '0',
               'pending', '0', 'earned', '0', 'redeemed', '0', 'seq', '0', 'state', 'active',
               'state_reason', '', 'state_ms', '0', 'enrolled_ms', now_ms)
    redis.call('HINCRBY', k_fig(tag, p), (args[7] ~= '' and args[7] or '-') .. ':members', 1)
  end
  redis.call('HSET', k_member(tag, p, m), 'birth_month', birth_month, 'variant', args[7])
  return reply_with({status}, read_member(tag, p, m))
end

--[[
loyalty_read: a member's balance and what earning needs to know of it.
KEYS: 1 member
ARGV: 1 tag, 2 program, 3 member, 4 'earning' to leave out what only readers of the
      balance need (challenge progress, the latest ledger id), 5 a day number and
      6 a number of days: the qualifying points are then summed over the days that end
      with that day and returned as one (day, sum) pair
Returns {'ok', ...balance, challenge progress (flat hash), id of the latest
ledger record, qualifying days and points (flat)} or {'missing'}.
--]]
local function loyalty_read(keys, args)
  local tag, p, m = args[1], args[2], args[3]
  local r = read_member(tag, p, m)
  if not r then
    return {'missing'}
  end
  local reply = reply_with({'ok'}, r)
  if args[4] == 'earning' then
    -- What an authorization's earn plan needs, and no more: no challenge progress, no
    -- ledger position (the commit applies both itself).
    reply[#reply + 1] = {}
    reply[#reply + 1] = '0-0'
  else
    reply[#reply + 1] = redis.call('HGETALL', k_chal(tag, p, m))
    reply[#reply + 1] = last_entry_id(k_lledger(tag, p, m))
  end
  if args[5] and args[5] ~= '' then
    -- Only the sum over the qualification window that ends on day args[5]: a member
    -- earning daily has hundreds of day buckets, too many to send (or scan) every read.
    reply[#reply + 1] = args[5]
    reply[#reply + 1] = fmt(qualifying(r, tonumber(args[5]), tonumber(args[6])))
  else
    for _, v in ipairs(redis.call('HGETALL', k_qual(tag, p, m))) do
      reply[#reply + 1] = v
    end
  end
  return reply
end

--[[
loyalty_books: a member's stored available and pending points and the id of its
latest ledger entry, read in one atomic call, for `payauth reconcile` (see
account_books: the balance is exactly the sum of the entries up to that id).
KEYS: 1 member, 2 its ledger
Returns {} when the member is not enrolled, else {available, pending, latest
ledger entry id}.
--]]
local function loyalty_books(keys, args)
  local stored = redis.call('HMGET', keys[1], 'available', 'pending')
  if not stored[1] then
    return {}
  end
  return {stored[1], stored[2], last_entry_id(keys[2])}
end

-- The stored answer of a loyalty call, or nil; {'conflict'} for another body.
local function loyalty_stored(idem_key, fingerprint)
  local rec = redis.call('HMGET', idem_key, 'fp', 'reply')
  if not rec[1] then
    return nil
  end
  if rec[1] ~= fingerprint then
    return {'conflict'}
  end
  return {'replay', rec[2]}
end

local function loyalty_store(idem_key, fingerprint, reply_json, ttl_ms)
  redis.call('HSET', idem_key, 'fp', fingerprint, 'reply', reply_json)
  redis.call('PEXPIRE', idem_key, ttl_ms)
end

--[[
loyalty_earn: the Earn call. KEYS: 1 member
ARGV: 1 tag, 2 program, 3 member, 4 request id, 5 fingerprint, 6 plan (JSON),
      7 post ('1'/'0'), 8 authorization id, 9 now (ms), 10 idempotency ttl (ms)
Returns {'new'|'replay', answer JSON}, {'conflict'} or {'missing'}.
--]]
local function loyalty_earn(keys, args)
  local tag, p, m, req, fp = args[1], args[2], args[3], args[4], args[5]
  local plan, post, auth, now_ms, ttl = cjson.decode(args[6]), args[7] == '1', args[8],
    args[9], args[10]
  local idem_key = k_lidem(tag, p, req)
  local stored = loyalty_stored(idem_key, fp)
  if stored then return stored end
  local r = read_member(tag, p, m)
  if not r then return {'missing'} end
  local res = loyalty.earn(r, plan, 1, 1, post, req, auth, now_ms)
  local answer = cjson.encode({points = res.points, rules = res.rules, completed = res.completed,
                               bonus = res.bonus, entry = res.entry, refused = res.refused or '',
                               balance = balance_of(r)})
  loyalty_store(idem_key, fp, answer, ttl)
  return {'new', answer}
end

--[[
loyalty_redeem: the Redeem call. KEYS: 1 member
ARGV: 1 tag, 2 program, 3 member, 4 request id, 5 fingerprint, 6 points,
      7 allow partial ('1'/'0'), 8 limits (JSON: day, day_limit, hour_limit),
      9 authorization id, 10 description, 11 version, 12 now (ms), 13 ttl (ms),
      14 variant
Returns {'new'|'replay', answer JSON}, {'conflict'} or {'missing'}.
--]]
local function loyalty_redeem(keys, args)
  local tag, p, m, req, fp = args[1], args[2], args[3], args[4], args[5]
  local idem_key = k_lidem(tag, p, req)
  local stored = loyalty_stored(idem_key, fp)
  if stored then return stored end
  local r = read_member(tag, p, m)
  if not r then return {'missing'} end
  local now_ms = args[12]
  local redeemed, entry, refused = loyalty.redeem(
    r, tonumber(args[6]), args[7] == '1', cjson.decode(args[8]),
    {reason = args[10] ~= '' and args[10] or 'redemption', req = req, auth = args[9],
     ver = tonumber(args[11]), var = args[14]}, now_ms)
  local answer = cjson.encode({points = redeemed, entry = entry, refused = refused or '',
                               balance = balance_of(r)})
  if not refused then
    loyalty_store(idem_key, fp, answer, args[13])
  end
  return {'new', answer}
end

--[[
loyalty_adjust: the Adjust call. KEYS: 1 member
ARGV: 1 tag, 2 program, 3 member, 4 request id, 5 fingerprint, 6 points delta,
      7 reason, 8 counts toward tier ('1'/'0'), 9 allow negative ('1'/'0'),
      10 new state ('' to keep), 11 state reason, 12 day, 13 qualification days,
      14 expiry (ms), 15 version, 16 now (ms), 17 ttl (ms), 18 adjustment limit
      per day (points, 0 none)
Returns {'new'|'replay', answer JSON}, {'conflict'} or {'missing'}.
--]]
local function loyalty_adjust(keys, args)
  local tag, p, m, req, fp = args[1], args[2], args[3], args[4], args[5]
  local idem_key = k_lidem(tag, p, req)
  local stored = loyalty_stored(idem_key, fp)
  if stored then return stored end
  local r = read_member(tag, p, m)
  if not r then return {'missing'} end
  local delta, now_ms = tonumber(args[6]), args[16]
  local entry, refused = '', ''
  local adjust_limit = tonumber(args[18])
  if delta ~= 0 and over_day_limit(r, args[12], 'adjusted', math.abs(delta), adjust_limit) then
    refused = 'limit'
    if r.state == 'active' then
      set_state(r, 'fraud_hold', 'daily adjustment limit exceeded', now_ms)
      save_member(r, now_ms)
    end
  elseif delta < 0 and not (args[9] == '1') and r.available + delta < 0 then
    refused = 'insufficient'
  elseif delta ~= 0 then
    if adjust_limit > 0 then
      count_day(r, args[12], 'adjusted', math.abs(delta))
    end
    local e = {kind = 'ADJUST', points = delta, reason = args[7], req = req,
               ver = tonumber(args[15])}
    if delta > 0 then
      entry = credit_available(r, e, tonumber(args[14]), now_ms)
      if args[8] == '1' then
        add_qualifying(r, args[12], delta, tonumber(args[13]))
      end
    else
      e.avail = delta
      entry = append_entry(r, e, now_ms)
      consume_lots(r, -delta)
    end
  end
  if refused == '' and args[10] ~= '' and args[10] ~= r.state then
    set_state(r, args[10], args[11], now_ms)
  end
  if refused == '' then
    save_member(r, now_ms)
  end
  local answer = cjson.encode({points = refused == '' and delta or 0, entry = entry,
                               refused = refused, balance = balance_of(r)})
  if refused == '' then
    loyalty_store(idem_key, fp, answer, args[17])
  end
  return {'new', answer}
end

--[[
loyalty_expire: expire every lot of one member that is due, exactly once
(each lot is removed by the call that expires it).
KEYS: 1 member
ARGV: 1 tag, 2 program, 3 member, 4 now (ms)
Returns the points expired.
--]]
local function loyalty_expire(keys, args)
  local tag, p, m, now_ms = args[1], args[2], args[3], args[4]
  local r = read_member(tag, p, m)
  if not r then
    redis.call('ZREM', k_lexp(tag), p .. '\t' .. m)
    return 0
  end
  local zkey, hkey = k_lots(tag, p, m), k_lot(tag, p, m)
  local due = redis.call('ZRANGEBYSCORE', zkey, '-inf', now_ms)
  local total = 0
  for _, lot in ipairs(due) do
    local left = tonumber(redis.call('HGET', hkey, lot) or '0')
    local points = math.min(left, math.max(r.available, 0))
    if points > 0 then
      append_entry(r, {kind = 'EXPIRE', points = -points, avail = -points,
                       reason = 'points expired', rel = lot}, now_ms)
      total = total + points
    end
    redis.call('ZREM', zkey, lot)
    redis.call('HDEL', hkey, lot)
  end
  index_lots(r)
  if #due > 0 then
    save_member(r, now_ms)
  end
  return total
end

--[[
loyalty_index: record (or read) the partition of a member, in the member
id's own partition. KEYS: 1 index key. ARGV: 1 partition ('' to only read).
Returns the partition recorded (the first one set wins).
--]]
local function loyalty_index(keys, args)
  if args[1] ~= '' then
    redis.call('SET', keys[1], args[1], 'NX')
  end
  return redis.call('GET', keys[1])
end

--[[
loyalty_program_put: store a new version of a loyalty program (older versions
are kept, the last ten, for purchases dated before a version's effective
time) and tell every worker.
KEYS: 1 the program's hash, 2 the set of all program ids
ARGV: 1 version, 2 content hash, 3 payload (serialized LoyaltyProgram), 4 now
      (ms), 5 notification channel, 6 notification
Returns {'stored', previous version}, {'replayed', version} or {'stale', latest}.
--]]
local function loyalty_program_put(keys, args)
  local cur = redis.call('HMGET', keys[1], 'version', 'h' .. args[1])
  local version = tonumber(args[1])
  if cur[2] and cur[2] == args[2] then
    return {'replayed', args[1]}
  end
  if cur[1] and version <= tonumber(cur[1]) then
    return {'stale', cur[1]}
  end
  redis.call('HSET', keys[1], 'version', args[1], 'v' .. args[1], args[3], 'h' .. args[1], args[2],
             'at_ms', args[4])
  redis.call('SADD', keys[2], string.sub(keys[1], string.len('{config}:lprog:') + 1))
  for _, f in ipairs(redis.call('HKEYS', keys[1])) do
    local n = tonumber(string.sub(f, 2))
    if n and (string.sub(f, 1, 1) == 'v' or string.sub(f, 1, 1) == 'h') and n <= version - 10 then
      redis.call('HDEL', keys[1], f)
    end
  end
  redis.call('PUBLISH', args[5], args[6])
  return {'stored', cur[1] or '0'}
end

redis.register_function('payauth_loyalty_program_put', loyalty_program_put)
redis.register_function('payauth_loyalty_enroll', loyalty_enroll)
redis.register_function{function_name = 'payauth_loyalty_read', callback = loyalty_read,
                        flags = {'no-writes'}}
redis.register_function('payauth_loyalty_earn', loyalty_earn)
redis.register_function('payauth_loyalty_redeem', loyalty_redeem)
redis.register_function('payauth_loyalty_adjust', loyalty_adjust)
redis.register_function('payauth_loyalty_expire', loyalty_expire)
redis.register_function('payauth_loyalty_index', loyalty_index)
redis.register_function{function_name = 'payauth_loyalty_books', callback = loyalty_books,
                        flags = {'no-writes'}}
