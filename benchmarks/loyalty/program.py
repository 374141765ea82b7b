"""The loyalty program the benchmark loads: 20 earning rules, 5 challenges, 3 tiers.

The rules are the kinds a multi-channel retailer runs at once, so the cost measured is that of a
realistic program rather than of one trivial condition: MCC lists, channels, weekend and hour of
day through `txn.timestamp` in UTC, amount thresholds, the member's tier, birthday month, tenure
and balance, partner merchants; multipliers and fixed bonuses mixed, several with per-day or
per-purchase caps (caps make the commit read and bump per-member day counters). The traffic's
MCCs and channels (benchmarks/e2e/mix.py) make most purchases match one rule or more.

Challenges run from a day before the run to 30 days after it, so every purchase of the run is
inside their windows and its progress is written in the commit.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from payauth.v1 import loyalty_pb2 as lp

DAY_S = 86_400
CURRENCIES = ("USD", "EUR", "BRL", "GBP")  # those of benchmarks/e2e/dataset.py
PARTNER_MERCHANTS = [f"m{i}" for i in range(0, 5000, 125)]  # 40 of the mix's 5,000 merchants
WEEKEND = 'txn.timestamp.getDayOfWeek("UTC") in [0, 6]'

# (id, condition, multiplier bps or 0, bonus points or 0, per-purchase cap, per-day cap, reason)
RULES: list[tuple[str, str, int, int, int, int, str]] = [
    ("grocery-weekend", f'txn.mcc in ["5411", "5422", "5451"] && {WEEKEND}', 20_000, 0, 0, 500,
     "2x groceries on weekends"),
    ("dining", 'txn.mcc in ["5812", "5813", "5814"]', 30_000, 0, 0, 300, "3x dining"),
    ("fuel", 'txn.mcc in ["5541", "5542"]', 20_000, 0, 0, 0, "2x fuel"),
    ("travel", 'txn.mcc in ["4111", "4511", "7011", "4722", "3000"]', 30_000, 0, 2_000, 0,
     "3x travel"),
    ("pharmacy", 'txn.mcc == "5912"', 20_000, 0, 0, 0, "2x pharmacy"),
    ("electronics-silver", 'member.tier in ["silver", "gold"] && txn.mcc == "5732"', 25_000, 0,
     0, 0, "2.5x electronics for Silver and Gold"),
    ("gold-everything", 'member.tier == "gold"', 15_000, 0, 0, 0, "1.5x on everything for Gold"),
    ("birthday", 'member.birth_month == txn.timestamp.getMonth("UTC") + 1', 30_000, 0, 0, 1_000,
     "3x in your birthday month"),
    ("home-market", 'txn.merchant_country == "US" && txn.currency == "USD"', 12_500, 0, 0, 0,
     "1.25x at home"),
    ("weekend-online", f'txn.channel == "ECOM" && {WEEKEND}', 20_000, 0, 0, 400,
     "2x online on weekends"),
    ("rich-basket", "member.available_points > 5000 && txn.amount_minor >= 5000", 15_000, 0, 0,
     0, "1.5x for big baskets of engaged members"),
    ("partner", f"merchant.id in {PARTNER_MERCHANTS!r}".replace("'", '"'), 40_000, 0, 5_000, 0,
     "4x at partner merchants"),
    ("online-bonus", 'txn.channel == "ECOM"', 0, 25, 0, 100, "25 points per online purchase"),
    ("tap-bonus", 'txn.channel == "CONTACTLESS"', 0, 5, 0, 50, "5 points per tap"),
    ("big-ticket", "txn.amount_minor >= 10000", 0, 100, 0, 200, "100 points from 100.00"),
    ("lunch", 'txn.mcc in ["5812", "5814"] && txn.timestamp.getHours("UTC") >= 11 && '
              'txn.timestamp.getHours("UTC") < 15 && !(' + WEEKEND + ")", 0, 20, 0, 40,
     "20 points for a weekday lunch"),
    ("night-owl", 'txn.timestamp.getHours("UTC") < 6', 0, 10, 0, 30, "10 points at night"),
    ("new-member", "member.tenure_days < 30", 0, 50, 0, 50, "50 points a day in the first month"),
    ("small-basket", 'txn.mcc == "5999" && txn.amount_minor < 2000', 0, 5, 0, 0,
     "5 points on small baskets"),
    ("month-start", 'txn.timestamp.getDate("UTC") <= 7 && txn.payment_method == "CARD"', 0, 15,
     0, 45, "15 points in the first week of the month"),
]

# (id, name, condition, goal, target, currency, bonus, max completions)
CHALLENGES: list[tuple[str, str, str, int, int, str, int, int]] = [
    ("coffee-5", "5 coffees", 'txn.mcc in ["5812", "5814"]', lp.CHALLENGE_GOAL_PURCHASE_COUNT, 5,
     "", 300, 0),
    ("travel-500", "Spend 500.00 on travel", 'txn.mcc in ["4111", "4511", "7011"]',
     lp.CHALLENGE_GOAL_SPEND_AMOUNT, 50_000, "USD", 1_000, 0),
    ("grocery-10", "10 grocery trips", 'txn.mcc == "5411"', lp.CHALLENGE_GOAL_PURCHASE_COUNT, 10,
     "", 200, 3),
    ("online-200", "Spend 200.00 online", 'txn.channel == "ECOM"', lp.CHALLENGE_GOAL_SPEND_AMOUNT,
     20_000, "USD", 500, 0),
    ("fuel-4", "4 fuel stops", 'txn.mcc == "5541"', lp.CHALLENGE_GOAL_PURCHASE_COUNT, 4, "", 150,
     2),
]

# (id, name, rank, qualifying points, earn multiplier bps)
TIERS = [("base", "Base", 0, 0, 10_000), ("silver", "Silver", 1, 1_000, 12_500),
         ("gold", "Gold", 2, 5_000, 15_000)]


def _ts(seconds: float) -> Timestamp:
    t = Timestamp()
    t.FromMilliseconds(int(seconds * 1000))
    return t


def build_program(program_id: str, now_s: float) -> lp.LoyaltyProgram:
    """The benchmark's program, its challenges open around `now_s` (the server's clock)."""
    rules = []
    for i, (rule_id, condition, multiplier, bonus, per_txn, per_day, reason) in enumerate(RULES):
        rule = lp.EarningRule(id=rule_id, condition=condition, priority=i, reason=reason,
                             max_points_per_transaction=per_txn, max_points_per_day=per_day)
        if multiplier:
            rule.multiplier_bps = multiplier
        else:
            rule.bonus_points = bonus
        rules.append(rule)
    challenges = [
        lp.LoyaltyChallenge(id=cid, name=name, condition=condition, goal=goal,
                           target_count=target if goal == lp.CHALLENGE_GOAL_PURCHASE_COUNT else 0,
                           target_amount_minor=target if goal == lp.CHALLENGE_GOAL_SPEND_AMOUNT
                           else 0, currency=currency, bonus_points=bonus,
                           starts_at=_ts(now_s - DAY_S), ends_at=_ts(now_s + 30 * DAY_S),
                           max_completions=completions)
        for cid, name, condition, goal, target, currency, bonus, completions in CHALLENGES]
    return lp.LoyaltyProgram(
        program_id=program_id, version=1, name="Benchmark rewards", points_currency="PTS",
        home_currency="USD",
        # 1 point = 0.01 in USD, EUR and GBP, 0.05 in BRL; 1 point per 1.00 (per 5.00 in BRL).
        point_values=[lp.PointValue(currency=c, value_mantissa=5 if c == "BRL" else 1,
                                   value_scale=0) for c in CURRENCIES],
        earn_rates=[lp.EarnRate(currency=c, points_mantissa=2 if c == "BRL" else 1,
                               points_scale=3 if c == "BRL" else 2) for c in CURRENCIES],
        earning_rules=rules,
        multiplier_combination=lp.MULTIPLIER_COMBINATION_HIGHEST,
        tiers=[lp.LoyaltyTier(id=t, name=n, rank=r, qualifying_points=q, earn_multiplier_bps=m)
               for t, n, r, q, m in TIERS],
        tier_qualification_days=365,
        challenges=challenges,
    )
