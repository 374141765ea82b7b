"""The benchmark's workload: an issuer policy of 50 rules, generated authorizations, and the
risk model trained on them.

Everything is generated at run time from fixed seeds, so every run measures the same inputs:

- `RULES`: a realistic issuer policy in payauth's CEL subset (amount thresholds, MCC lists,
  channel and 3-D Secure combinations, country mismatch, velocity features, night-time rules
  in the cardholder's time zone, score thresholds, `startsWith`/`endsWith`/`matches`, watch
  lists, ADD_TO_SCORE and TAG rules, four shadow rules), evaluated FIRST_MATCH. Each rule also
  carries the same condition in GoRules' expression language (`zen`), written by hand.
- `make_records(n, seed)`: authorizations as the server holds them before deciding: one
  nested dict per request, keyed like the decision context (`txn`, `card`, `account`,
  `merchant`, `features`, `watch_hits`) plus `risk`, the model-only features a feature
  service computes (device age, merchant fraud rate ...). Timestamps are Unix seconds, as in
  `google.protobuf.Timestamp`.
- `MODEL_FEATURES`: the 30 features of the risk model, named by their decision-context path
  ("txn.amount_minor", "features.card_txn_count_1h") or "risk.<name>", so the model binds by
  name onto the decision vector (`decision_vector_layout`).
- `train_lightgbm` / `train_xgboost`: 200 trees of depth 6 on 20,000 generated rows.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

# -- the policy ----------------------------------------------------------------------------

SAO_PAULO = "America/Sao_Paulo"


@dataclasses.dataclass(frozen=True)
class Rule:
    """One rule: its CEL condition (payauth, the CEL runtimes) and the same condition in
    zen-engine's expression language."""

    id: str
    action: str  # DECLINE, STEP_UP, APPROVE, ADD_TO_SCORE, TAG
    cel: str
    zen: str
    code: str = ""  # ISO 8583 response code for DECLINE / STEP_UP
    shadow: bool = False
    score_delta: float = 0.0
    tag: str = ""
    soft_decline: bool = False


def _hour(zone: str = SAO_PAULO) -> str:
    return f'd(txn.timestamp).tz("{zone}").hour()'


RULES: tuple[Rule, ...] = (
    # card and account state
    Rule("card_lost", "DECLINE", 'card.status == "LOST"', 'card.status == "LOST"', "41"),
    Rule("card_stolen", "DECLINE", 'card.status == "STOLEN"', 'card.status == "STOLEN"', "43"),
    Rule("card_blocked", "DECLINE", 'card.status == "BLOCKED"', 'card.status == "BLOCKED"',
         "62"),
    Rule("account_closed", "DECLINE", 'account.status == "CLOSED"',
         'account.status == "CLOSED"', "46"),
    Rule("account_frozen", "DECLINE", 'account.status == "FROZEN"',
         'account.status == "FROZEN"', "62"),
    Rule("card_expired", "DECLINE",
         'card.expiry_year * 12 + card.expiry_month < txn.timestamp.getFullYear("UTC") * 12'
         ' + txn.timestamp.getMonth("UTC") + 1',
         "card.expiry_year * 12 + card.expiry_month < d(txn.timestamp).year() * 12"
         " + d(txn.timestamp).month()", "54"),
    # tags and score adjustments (apply and go on)
    Rule("tag_cross_border", "TAG", "txn.merchant_country != card.country",
         "txn.merchant_country != card.country", tag="cross_border"),
    Rule("tag_mcc_mismatch", "TAG", 'txn.mcc != merchant.mcc && txn.channel == "ECOM"',
         'txn.mcc != merchant.mcc and txn.channel == "ECOM"', tag="mcc_mismatch"),
    Rule("score_no_device", "ADD_TO_SCORE",
         'txn.device_id == "" && txn.channel in ["ECOM", "MOTO"]',
         'txn.device_id == "" and txn.channel in ["ECOM", "MOTO"]', score_delta=0.05),
    Rule("score_ticket_jump", "ADD_TO_SCORE",
         "features.card_avg_ticket_minor > 0.0 && features.amount_to_avg_ticket_ratio > 5.0",
         "features.card_avg_ticket_minor > 0 and features.amount_to_avg_ticket_ratio > 5",
         score_delta=0.10),
    Rule("score_new_card_big", "ADD_TO_SCORE",
         "features.card_avg_ticket_minor == 0.0 && txn.amount_minor > 100000",
         "features.card_avg_ticket_minor == 0 and txn.amount_minor > 100000",
         score_delta=0.08),
    # watch lists
    Rule("watch_device", "DECLINE", '"DEVICE" in watch_hits', '"DEVICE" in watch_hits', "59"),
    Rule("watch_ip_ecom", "STEP_UP", '"IP" in watch_hits && txn.channel == "ECOM"',
         '"IP" in watch_hits and txn.channel == "ECOM"', "1A"),
    # merchant categories
    Rule("gambling_on_credit", "DECLINE",
         'txn.mcc in ["7995", "7800", "7801", "7802"] && account.kind == "CREDIT"',
         'txn.mcc in ["7995", "7800", "7801", "7802"] and account.kind == "CREDIT"', "57"),
    Rule("quasi_cash", "DECLINE",
         'txn.mcc in ["6051", "6050", "4829", "6211"] && txn.amount_minor > 100000',
         'txn.mcc in ["6051", "6050", "4829", "6211"] and txn.amount_minor > 100000', "57"),
    # devices and networks
    Rule("card_testing", "DECLINE",
         'features.device_distinct_cards_24h >= 5 && txn.device_id != ""',
         'features.device_distinct_cards_24h >= 5 and txn.device_id != ""', "59"),
    Rule("emulator_device", "DECLINE", 'txn.device_id.matches("^emu-[0-9a-f]{8}$")',
         'matches(txn.device_id, "^emu-[0-9a-f]{8}$")', "59"),
    Rule("private_ip_ecom", "DECLINE",
         r'txn.channel == "ECOM" && txn.ip.matches("^(10|127)\\.")',
         r'txn.channel == "ECOM" and matches(txn.ip, "^(10|127)\.")', "59"),
    Rule("test_net_ip", "DECLINE", 'txn.ip.startsWith("203.0.113.")',
         'startsWith(txn.ip, "203.0.113.")', "59"),
    # velocity
    Rule("velocity_1h", "DECLINE", "features.card_txn_count_1h > 10",
         "features.card_txn_count_1h > 10", "65"),
    Rule("amount_24h", "DECLINE",
         "features.card_amount_sum_24h_minor + txn.account_amount_minor > 2000000",
         "features.card_amount_sum_24h_minor + txn.account_amount_minor > 2000000", "61"),
    Rule("ip_velocity_ecom", "DECLINE",
         'features.ip_txn_count_1h > 50 && txn.channel == "ECOM"',
         'features.ip_txn_count_1h > 50 and txn.channel == "ECOM"', "59"),
    Rule("decline_streak", "DECLINE", "features.card_decline_count_24h >= 5",
         "features.card_decline_count_24h >= 5", "65"),
    Rule("many_countries", "STEP_UP",
         "features.card_distinct_countries_24h >= 4 && txn.merchant_country != card.country",
         "features.card_distinct_countries_24h >= 4 and txn.merchant_country != card.country",
         "1A"),
    Rule("sanctioned_country", "DECLINE", 'txn.merchant_country in ["KP", "IR", "SY", "CU"]',
         'txn.merchant_country in ["KP", "IR", "SY", "CU"]', "62"),
    # funds and limits
    Rule("debit_insufficient", "DECLINE",
         'account.kind == "DEBIT" && txn.account_amount_minor > account.available_minor'
         " && !txn.partial_ok",
         'account.kind == "DEBIT" and txn.account_amount_minor > account.available_minor'
         " and not txn.partial_ok", "51"),
    Rule("credit_over_limit", "DECLINE",
         'account.kind == "CREDIT" && txn.account_amount_minor > account.available_minor',
         'account.kind == "CREDIT" and txn.account_amount_minor > account.available_minor',
         "51"),
    Rule("wallet_limit", "DECLINE",
         'txn.payment_method == "CREDIT_WALLET"'
         " && txn.account_amount_minor > account.credit_limit_minor / 2",
         'txn.payment_method == "CREDIT_WALLET"'
         " and txn.account_amount_minor > account.credit_limit_minor / 2", "51"),
    Rule("points_abuse", "DECLINE",
         "txn.points_to_redeem > 50000 && features.card_txn_count_1h > 3",
         "txn.points_to_redeem > 50000 and features.card_txn_count_1h > 3", "61"),
    # time of day, in the cardholder's time zone
    Rule("pix_night_limit", "DECLINE",
         'txn.payment_method == "INSTANT_PAYMENT"'
         f' && (txn.timestamp.getHours("{SAO_PAULO}") >= 20'
         f' || txn.timestamp.getHours("{SAO_PAULO}") < 6) && txn.amount_minor > 100000',
         f'txn.payment_method == "INSTANT_PAYMENT" and ({_hour()} >= 20 or {_hour()} < 6)'
         " and txn.amount_minor > 100000", "61"),
    Rule("night_ecom", "STEP_UP",
         f'txn.channel == "ECOM" && txn.timestamp.getHours("{SAO_PAULO}") < 6'
         ' && txn.amount_minor > 50000 && txn.three_ds != "AUTHENTICATED"',
         f'txn.channel == "ECOM" and {_hour()} < 6 and txn.amount_minor > 50000'
         ' and txn.three_ds != "AUTHENTICATED"', "1A"),
    Rule("weekend_atm", "DECLINE",
         f'txn.channel == "ATM" && txn.timestamp.getDayOfWeek("{SAO_PAULO}") in [0, 6]'
         " && txn.amount_minor > 100000",
         f'txn.channel == "ATM" and d(txn.timestamp).tz("{SAO_PAULO}").weekday() in [6, 7]'
         " and txn.amount_minor > 100000", "61"),
    # channel, 3-D Secure and geography
    Rule("atm_abroad", "STEP_UP",
         'txn.channel == "ATM" && txn.merchant_country != card.country'
         " && txn.amount_minor > 50000",
         'txn.channel == "ATM" and txn.merchant_country != card.country'
         " and txn.amount_minor > 50000", "1A"),
    Rule("three_ds_failed", "DECLINE", 'txn.three_ds == "FAILED"', 'txn.three_ds == "FAILED"',
         "05"),
    Rule("abroad_card_not_present", "STEP_UP",
         'txn.merchant_country != card.country && txn.channel in ["ECOM", "MOTO"]'
         ' && txn.three_ds != "AUTHENTICATED"',
         'txn.merchant_country != card.country and txn.channel in ["ECOM", "MOTO"]'
         ' and txn.three_ds != "AUTHENTICATED"', "1A"),
    Rule("moto_large", "DECLINE", 'txn.channel == "MOTO" && txn.amount_minor > 200000',
         'txn.channel == "MOTO" and txn.amount_minor > 200000', "61"),
    # the model's score
    Rule("score_very_high", "DECLINE", "score >= 0.95", "score >= 0.95", "59",
         soft_decline=True),
    Rule("score_high_unauthenticated", "STEP_UP",
         'score >= 0.8 && txn.three_ds != "AUTHENTICATED"',
         'score >= 0.8 and txn.three_ds != "AUTHENTICATED"', "1A"),
    # amounts
    Rule("debit_large", "STEP_UP",
         'txn.account_amount_minor > 500000 && account.kind == "DEBIT"',
         'txn.account_amount_minor > 500000 and account.kind == "DEBIT"', "1A"),
    Rule("cross_currency_large", "STEP_UP",
         "txn.currency != account.currency && txn.account_amount_minor > 300000",
         "txn.currency != account.currency and txn.account_amount_minor > 300000", "1A"),
    Rule("contactless_sca", "STEP_UP",
         'txn.channel == "CONTACTLESS" && txn.amount_minor > 25000'
         " && features.card_txn_count_24h > 5",
         'txn.channel == "CONTACTLESS" and txn.amount_minor > 25000'
         " and features.card_txn_count_24h > 5", "65"),
    Rule("travel_abroad_risky", "STEP_UP",
         'txn.mcc in ["3000", "3001", "4511", "7011"] && txn.merchant_country != card.country'
         " && score > 0.6",
         'txn.mcc in ["3000", "3001", "4511", "7011"] and txn.merchant_country != card.country'
         " and score > 0.6", "1A"),
    Rule("round_amount_cnp", "STEP_UP",
         'txn.amount_minor % 10000 == 0 && txn.amount_minor >= 100000'
         ' && txn.channel in ["ECOM", "MOTO"]',
         'txn.amount_minor % 10000 == 0 and txn.amount_minor >= 100000'
         ' and txn.channel in ["ECOM", "MOTO"]', "1A"),
    # merchants and card products
    Rule("virtual_card_present", "DECLINE",
         'card.token.endsWith("-virtual") && txn.channel in ["POS", "CONTACTLESS"]',
         'endsWith(card.token, "-virtual") and txn.channel in ["POS", "CONTACTLESS"]', "57"),
    Rule("test_merchant", "DECLINE", 'txn.merchant_id.startsWith("TEST-")',
         'startsWith(txn.merchant_id, "TEST-")', "05"),
    Rule("recurring_known_good", "APPROVE",
         'txn.channel == "RECURRING" && features.card_decline_count_24h == 0'
         " && txn.amount_minor < 50000",
         'txn.channel == "RECURRING" and features.card_decline_count_24h == 0'
         " and txn.amount_minor < 50000"),
    # shadow rules: evaluated on live traffic and reported, never acted on
    Rule("shadow_score_ecom", "STEP_UP",
         'score >= 0.7 && txn.channel == "ECOM" && txn.three_ds != "AUTHENTICATED"',
         'score >= 0.7 and txn.channel == "ECOM" and txn.three_ds != "AUTHENTICATED"', "1A",
         shadow=True),
    Rule("shadow_velocity_1h", "DECLINE", "features.card_txn_count_1h > 6",
         "features.card_txn_count_1h > 6", "65", shadow=True),
    Rule("shadow_mcc_59_jump", "STEP_UP",
         'txn.mcc.startsWith("59") && features.amount_to_avg_ticket_ratio > 4.0',
         'startsWith(txn.mcc, "59") and features.amount_to_avg_ticket_ratio > 4', "1A",
         shadow=True),
    Rule("shadow_night_ecom", "DECLINE",
         f'txn.timestamp.getHours("{SAO_PAULO}") < 6 && txn.channel == "ECOM"'
         " && txn.amount_minor > 20000",
         f'{_hour()} < 6 and txn.channel == "ECOM" and txn.amount_minor > 20000', "59",
         shadow=True),
)
assert len(RULES) == 50, len(RULES)
assert len({r.id for r in RULES}) == 50

STEP_UP_SCORE_THRESHOLD = 0.9
DECLINE_SCORE_THRESHOLD = 0.98

# Time zone arguments that cel-rust (common-expression-language) lacks: its timestamp
# accessors take no zone. America/Sao_Paulo has kept UTC-03:00 all year since 2019, so for the
# generated (2024) timestamps `t.getHours("America/Sao_Paulo")` is exactly
# `(t - duration("3h")).getHours()`; the cross-check confirms it on every sampled input.
ZONE_REWRITES = (
    (f'txn.timestamp.getHours("{SAO_PAULO}")', '(txn.timestamp - duration("3h")).getHours()'),
    (f'txn.timestamp.getDayOfWeek("{SAO_PAULO}")',
     '(txn.timestamp - duration("3h")).getDayOfWeek()'),
    ('txn.timestamp.getFullYear("UTC")', "txn.timestamp.getFullYear()"),
    ('txn.timestamp.getMonth("UTC")', "txn.timestamp.getMonth()"),
)


def without_zones(condition: str) -> str:
    """`condition` with its time zone arguments replaced by fixed-offset arithmetic."""
    for old, new in ZONE_REWRITES:
        condition = condition.replace(old, new)
    return condition


# -- the decision context and the model's features -----------------------------------------

# Context fields that are numbers: the model reads them straight from the decision context.
CONTEXT_MODEL_FEATURES = (
    "txn.amount_minor", "txn.account_amount_minor", "txn.points_to_redeem",
    "card.expiry_year", "card.expiry_month",
    "account.balance_minor", "account.available_minor", "account.credit_limit_minor",
    "features.card_txn_count_1h", "features.card_txn_count_24h",
    "features.card_amount_sum_24h_minor", "features.card_avg_ticket_minor",
    "features.amount_to_avg_ticket_ratio", "features.device_distinct_cards_24h",
    "features.ip_txn_count_1h", "features.merchant_txn_count_1m",
    "features.card_decline_count_24h", "features.card_distinct_countries_24h",
)
# Features only the model reads, computed by the feature service (NaN when unknown).
RISK_FEATURES = (
    "device_age_days", "email_age_days", "card_age_days", "hours_since_last_txn",
    "merchant_fraud_rate_30d", "bin_fraud_rate_30d", "ip_distance_km", "mcc_risk",
    "distinct_merchants_7d", "failed_cvv_24h", "avg_amount_7d", "channel_risk",
)
MODEL_FEATURES = CONTEXT_MODEL_FEATURES + tuple(f"risk.{n}" for n in RISK_FEATURES)
assert len(MODEL_FEATURES) == 30

N_TREES = 200
MAX_DEPTH = 6


def decision_vector_layout(context_slots: dict[str, int], n_slots: int) -> dict[str, int]:
    """Model feature name -> index in the decision vector: a context field sits at its
    decision-context slot, a model-only feature after the context's slots."""
    layout = {name: context_slots[name] for name in CONTEXT_MODEL_FEATURES}
    for i, name in enumerate(RISK_FEATURES):
        layout[f"risk.{name}"] = n_slots + i
    return layout


def model_row(record: dict[str, Any]) -> list[float]:
    """A record's model features in the model's column order (what the libraries read)."""
    row = []
    for name in CONTEXT_MODEL_FEATURES:
        group, field = name.split(".")
        row.append(float(record[group][field]))
    risk = record["risk"]
    row.extend(float(risk[n]) for n in RISK_FEATURES)
    return row


# -- generated authorizations ---------------------------------------------------------------

_MCCS = ("5411", "5812", "5999", "5311", "5732", "5912", "4121", "4111", "5541", "7011",
         "4511", "3000", "3001", "5691", "5945", "7995", "7801", "6051", "4829", "6211",
         "5815", "5816", "5967", "5993", "8999")
_MCC_P = np.array([14, 12, 8, 8, 6, 6, 5, 4, 6, 3, 2, 1, 1, 4, 3, 0.6, 0.3, 0.5, 0.5, 0.3,
                   5, 3, 1, 1, 4.8])
_CHANNELS = ("POS", "ECOM", "CONTACTLESS", "ATM", "MOTO", "RECURRING", "INSTANT_PAYMENT")
_CHANNEL_P = np.array([33, 30, 20, 5, 3, 5, 4])
_THREE_DS = ("AUTHENTICATED", "ATTEMPTED", "NOT_ATTEMPTED", "FAILED", "EXEMPTED")
_THREE_DS_P = np.array([62, 14, 14, 2, 8])
_COUNTRIES = ("BR", "US", "PT", "AR", "CN", "DE", "GB", "IR", "KP")
_COUNTRY_P = np.array([85, 5, 3, 3, 1.5, 1, 1.2, 0.2, 0.1])
_CURRENCY = {"BR": "BRL", "US": "USD", "PT": "EUR", "DE": "EUR", "AR": "ARS", "CN": "CNY",
             "GB": "GBP", "IR": "IRR", "KP": "KPW"}
_FX = {"BRL": 1.0, "USD": 5.8, "EUR": 6.1, "ARS": 0.006, "CNY": 0.8, "GBP": 7.3,
       "IRR": 0.00014, "KPW": 0.0064}
_CARD_STATUS = ("ACTIVE", "BLOCKED", "LOST", "STOLEN")
_CARD_STATUS_P = np.array([99.2, 0.4, 0.25, 0.15])
_ACCOUNT_STATUS = ("ACTIVE", "FROZEN", "CLOSED")
_ACCOUNT_STATUS_P = np.array([99.5, 0.3, 0.2])
# 2024-11-24T02:00:00Z: Saturday 23:00 in Sao Paulo, the start of the Black Friday week
_WEEK_START = 1732413600


def _pick(rng: np.random.Generator, values: tuple, p: np.ndarray, n: int) -> list:
    idx = rng.choice(len(values), size=n, p=p / p.sum())
    return [values[i] for i in idx]


def make_records(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` authorizations with their context, features and model-only features."""
    rng = np.random.default_rng(seed)
    channel = _pick(rng, _CHANNELS, _CHANNEL_P, n)
    mcc = _pick(rng, _MCCS, _MCC_P, n)
    three_ds = _pick(rng, _THREE_DS, _THREE_DS_P, n)
    country = _pick(rng, _COUNTRIES, _COUNTRY_P, n)
    card_status = _pick(rng, _CARD_STATUS, _CARD_STATUS_P, n)
    account_status = _pick(rng, _ACCOUNT_STATUS, _ACCOUNT_STATUS_P, n)
    amount = np.clip(rng.lognormal(8.6, 1.3, n), 100, 4_000_000).astype(np.int64)
    round_amount = rng.random(n) < 0.04
    amount[round_amount] = (amount[round_amount] // 10000 + 1) * 10000
    avg_ticket = np.clip(rng.lognormal(8.6, 0.8, n), 500, 2_000_000)
    new_card = rng.random(n) < 0.05
    txn_1h = rng.poisson(0.8, n) + (rng.random(n) < 0.02) * rng.integers(5, 20, n)
    txn_24h = txn_1h + rng.poisson(4, n)
    device_cards = 1 + (rng.random(n) < 0.03) * rng.integers(1, 12, n)
    ip_1h = rng.poisson(2, n) + (rng.random(n) < 0.01) * rng.integers(40, 200, n)
    merchant_1m = rng.poisson(30, n) + (rng.random(n) < 0.02) * rng.integers(100, 1000, n)
    declines = rng.poisson(0.2, n) + (rng.random(n) < 0.01) * rng.integers(3, 10, n)
    countries_24h = 1 + rng.poisson(0.3, n)
    kind_credit = rng.random(n) < 0.55
    available = np.clip(rng.lognormal(11.5, 1.2, n), 0, 50_000_000).astype(np.int64)
    credit_limit = np.where(kind_credit, rng.integers(100, 5000, n) * 1000, 0)
    timestamp = _WEEK_START + rng.integers(0, 7 * 86400, n)
    records = []
    for i in range(n):
        ch = channel[i]
        cnp = ch in ("ECOM", "MOTO")
        merchant_country = country[i]
        currency = _CURRENCY[merchant_country] if rng.random() < 0.9 else "BRL"
        account_amount = int(amount[i] if currency == "BRL" else round(amount[i] * _FX[currency]))
        r = rng.random()
        device = "" if ch in ("POS", "ATM") or r < 0.08 else (
            f"emu-{int(rng.integers(0, 2**32)):08x}" if r < 0.085 else
            f"dev-{int(rng.integers(0, 2**40)):010x}")
        r = rng.random()
        ip = "" if not cnp and ch != "INSTANT_PAYMENT" else (
            f"10.{int(rng.integers(0, 255))}.{int(rng.integers(0, 255))}.7" if r < 0.005 else
            f"203.0.113.{int(rng.integers(1, 255))}" if r < 0.008 else
            f"177.{int(rng.integers(0, 255))}.{int(rng.integers(0, 255))}."
            f"{int(rng.integers(1, 255))}")
        merchant_id = f"TEST-{i}" if rng.random() < 0.002 else (
            f"mx-{int(rng.integers(0, 5000)):05d}" if rng.random() < 0.1 else
            f"m-{int(rng.integers(0, 50000)):06d}")
        ratio = 0.0 if new_card[i] else float(account_amount / avg_ticket[i])
        watch: list[str] = []
        r = rng.random()
        if r < 0.004:
            watch = ["DEVICE"]
        elif r < 0.01:
            watch = ["IP"]
        payment_method = "INSTANT_PAYMENT" if ch == "INSTANT_PAYMENT" else (
            "CREDIT_WALLET" if rng.random() < 0.05 else
            "POINTS" if rng.random() < 0.03 else "CARD")
        points = int(rng.integers(1000, 120000)) if payment_method == "POINTS" else 0
        records.append({
            "txn": {
                "amount_minor": int(amount[i]),
                "currency": currency,
                "mcc": mcc[i],
                "channel": ch,
                "payment_method": payment_method,
                "merchant_country": merchant_country,
                "device_id": device,
                "ip": ip,
                "three_ds": three_ds[i] if cnp else "",
                "partial_ok": bool(rng.random() < 0.2),
                "points_to_redeem": points,
                "timestamp": int(timestamp[i]),
                "merchant_id": merchant_id,
                "account_amount_minor": account_amount,
            },
            "card": {
                "token": f"tok-{int(rng.integers(0, 2**40)):010x}"
                         + ("-virtual" if rng.random() < 0.05 else ""),
                "status": card_status[i],
                # about 1 % of cards expired (before November 2024)
                "expiry_year": int(rng.integers(2025, 2032)) if rng.random() > 0.012
                else 2024,
                "expiry_month": int(rng.integers(1, 13)),
                "country": "BR" if rng.random() < 0.95 else "US",
            },
            "account": {
                "kind": "CREDIT" if kind_credit[i] else "DEBIT",
                "status": account_status[i],
                "currency": "BRL",
                "balance_minor": int(available[i] + rng.integers(0, 100000)),
                "available_minor": int(available[i]),
                "credit_limit_minor": int(credit_limit[i]),
            },
            "merchant": {
                "id": merchant_id,
                "mcc": mcc[i] if rng.random() < 0.95 else "5999",
                "country": merchant_country,
            },
            "features": {
                "card_txn_count_1h": int(txn_1h[i]),
                "card_txn_count_24h": int(txn_24h[i]),
                "card_amount_sum_24h_minor": int(txn_24h[i] * avg_ticket[i] * rng.random()),
                "card_avg_ticket_minor": 0.0 if new_card[i] else float(avg_ticket[i]),
                "amount_to_avg_ticket_ratio": ratio,
                "device_distinct_cards_24h": int(device_cards[i]) if device else 0,
                "ip_txn_count_1h": int(ip_1h[i]) if ip else 0,
                "merchant_txn_count_1m": int(merchant_1m[i]),
                "card_decline_count_24h": int(declines[i]),
                "card_distinct_countries_24h": int(countries_24h[i]),
            },
            "watch_hits": watch,
            "risk": {
                "device_age_days": float(rng.exponential(200)) if device else math.nan,
                "email_age_days": float(rng.exponential(900)) if rng.random() < 0.9
                else math.nan,
                "card_age_days": float(rng.exponential(700)),
                "hours_since_last_txn": float(rng.exponential(30)),
                "merchant_fraud_rate_30d": float(rng.beta(1, 300)),
                "bin_fraud_rate_30d": float(rng.beta(1, 500)),
                "ip_distance_km": float(rng.exponential(50)) if ip else math.nan,
                "mcc_risk": float(_MCCS.index(mcc[i]) / len(_MCCS)),
                "distinct_merchants_7d": float(rng.poisson(6)),
                "failed_cvv_24h": float(rng.poisson(0.05)),
                "avg_amount_7d": float(avg_ticket[i] * rng.lognormal(0, 0.3)),
                "channel_risk": float(_CHANNELS.index(ch)) + (0.5 if cnp and three_ds[i]
                                                              != "AUTHENTICATED" else 0.0),
            },
            "score": 0.0,
        })
    return records


def labels(rows: np.ndarray, seed: int) -> np.ndarray:
    """Fraud labels drawn from a known risk function of the model features (about 5 %)."""
    rng = np.random.default_rng(seed)
    col = {name: i for i, name in enumerate(MODEL_FEATURES)}

    def f(name: str) -> np.ndarray:
        return np.nan_to_num(rows[:, col[name]], nan=-1.0)

    logit = (-6.4
             + 0.9 * np.log1p(f("features.amount_to_avg_ticket_ratio"))
             + 0.25 * f("features.card_txn_count_1h")
             + 0.3 * np.log1p(f("features.device_distinct_cards_24h"))
             + 120 * f("risk.merchant_fraud_rate_30d")
             + 150 * f("risk.bin_fraud_rate_30d")
             + 0.6 * (f("risk.device_age_days") < 2)
             + 0.5 * (f("risk.email_age_days") < 30)
             + 0.004 * np.minimum(f("risk.ip_distance_km"), 500)
             + 0.35 * f("risk.channel_risk")
             + 0.8 * f("risk.failed_cvv_24h")
             + 0.3 * f("features.card_decline_count_24h")
             + 0.5 * np.log1p(f("txn.amount_minor")) / 10)
    return (rng.random(len(rows)) < 1 / (1 + np.exp(-logit))).astype(np.int32)


def training_set(n: int = 20000, seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """(X, y): `n` generated rows of the model's 30 features and their labels."""
    rows = np.array([model_row(r) for r in make_records(n, seed)], dtype=np.float64)
    return rows, labels(rows, seed + 1)


def train_lightgbm(x: np.ndarray, y: np.ndarray) -> Any:
    """200 trees of depth 6 (63 leaves), binary objective, named features."""
    import lightgbm as lgb

    params = {"objective": "binary", "num_leaves": 63, "max_depth": MAX_DEPTH,
              "learning_rate": 0.05, "min_data_in_leaf": 5, "min_sum_hessian_in_leaf": 0.0,
              "verbose": -1, "seed": 7, "deterministic": True, "num_threads": 2}
    data = lgb.Dataset(x, y, feature_name=list(MODEL_FEATURES), free_raw_data=False)
    return lgb.train(params, data, num_boost_round=N_TREES)


def train_xgboost(x: np.ndarray, y: np.ndarray) -> Any:
    """The same task with XGBoost: 200 trees of depth 6, binary:logistic, named features."""
    import xgboost as xgb

    data = xgb.DMatrix(x, y, feature_names=list(MODEL_FEATURES))
    params = {"objective": "binary:logistic", "max_depth": MAX_DEPTH, "eta": 0.1,
              "tree_method": "hist", "seed": 7, "nthread": 2, "min_child_weight": 0.0}
    return xgb.train(params, data, num_boost_round=N_TREES)

