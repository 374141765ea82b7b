"""The decision context of one authorization, filled once for the core.

Policies read it as the CEL variables `txn`, `card`, `account`, `merchant`,
`features` and `score` (protos/payauth/v1/context.proto); scoring models read
the numeric part of the same fields, named by the same paths. One filler per
worker reuses its context vector and its feature vector for every request:
Authorize fills them and evaluates the core without awaiting in between, so
no two requests ever share them at once.

String fields a model can read are given natural numeric codes: the MCC as its
number, and enum-valued fields (channel, payment method, 3-D Secure result,
card and account states) as their payauth.v1 enum numbers.

Velocity features are not computed yet (they come with the features stage): they read
as zero and `has(features.x)` is false.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from payauth.core import DecisionContextBuilder
from payauth.core.cel_eval import Activation
from payauth.server.store import AccountRecord, CardRecord
from payauth.v1 import authorizer_pb2, common_pb2

_NAMES = {
    "channel": {n: k.removeprefix("CHANNEL_") for k, n in common_pb2.Channel.items()},
    "payment_method": {n: k.removeprefix("PAYMENT_METHOD_")
                       for k, n in common_pb2.PaymentMethod.items()},
    "three_ds": {n: k.removeprefix("THREE_DS_RESULT_")
                 for k, n in common_pb2.ThreeDsResult.items()},
    "card_status": {n: k.removeprefix("CARD_STATUS_") for k, n in common_pb2.CardStatus.items()},
    "account_status": {n: k.removeprefix("ACCOUNT_STATUS_")
                       for k, n in common_pb2.AccountStatus.items()},
    "kind": {n: k.removeprefix("ACCOUNT_KIND_") for k, n in common_pb2.AccountKind.items()},
}

Request = authorizer_pb2.AuthorizeRequest

# The fields a scoring model may read, by policy path, with how to read each as a number.
MODEL_FEATURES: dict[str, Callable[[Request, CardRecord, AccountRecord], float]] = {
    "txn.amount_minor": lambda r, c, a: r.amount_minor,
    "txn.account_amount_minor": lambda r, c, a: r.amount_minor,
    "txn.mcc": lambda r, c, a: int(r.mcc),
    "txn.channel": lambda r, c, a: r.channel,
    "txn.payment_method": lambda r, c, a: r.payment_method,
    "txn.three_ds": lambda r, c, a: r.three_ds,
    "txn.partial_ok": lambda r, c, a: r.partial_ok,
    "txn.points_to_redeem": lambda r, c, a: r.points_to_redeem,
    "card.status": lambda r, c, a: c.status,
    "card.expiry_year": lambda r, c, a: c.expiry_year,
    "card.expiry_month": lambda r, c, a: c.expiry_month,
    "account.kind": lambda r, c, a: a.kind,
    "account.status": lambda r, c, a: a.status,
    "account.balance_minor": lambda r, c, a: a.balance,
    "account.available_minor": lambda r, c, a: a.available,
    "account.credit_limit_minor": lambda r, c, a: a.limit,
    "features.card_txn_count_1h": lambda r, c, a: 0,
    "features.card_txn_count_24h": lambda r, c, a: 0,
    "features.card_amount_sum_24h_minor": lambda r, c, a: 0,
    "features.card_avg_ticket_minor": lambda r, c, a: 0,
    "features.amount_to_avg_ticket_ratio": lambda r, c, a: 0,
    "features.device_distinct_cards_24h": lambda r, c, a: 0,
    "features.ip_txn_count_1h": lambda r, c, a: 0,
    "features.merchant_txn_count_1m": lambda r, c, a: 0,
    "features.card_decline_count_24h": lambda r, c, a: 0,
    "features.card_distinct_countries_24h": lambda r, c, a: 0,
}
MODEL_LAYOUT: dict[str, int] = {name: i for i, name in enumerate(MODEL_FEATURES)}


class DecisionContextFiller:
    """Fills this worker's context vector (policies) and feature vector (models)."""

    def __init__(self) -> None:
        builder = DecisionContextBuilder()
        slot = builder.slot
        self.context: Activation = builder.new()
        self.features = np.zeros(len(MODEL_FEATURES), dtype=np.float64)
        self._readers = tuple(MODEL_FEATURES.values())
        self._present = tuple(slot(p) for p in ("txn?", "card?", "account?", "merchant?"))
        self._score = slot("score")
        self._txn = tuple(slot(f"txn.{f}") for f in (
            "amount_minor", "currency", "mcc", "channel", "payment_method", "merchant_country",
            "device_id", "ip", "three_ds", "partial_ok", "points_to_redeem", "timestamp",
            "timestamp?", "merchant_id", "account_amount_minor"))
        self._card = tuple(slot(f"card.{f}") for f in ("token", "status", "expiry_year",
                                                        "expiry_month"))
        self._account = tuple(slot(f"account.{f}") for f in (
            "kind", "status", "currency", "balance_minor", "available_minor",
            "credit_limit_minor"))
        self._merchant = tuple(slot(f"merchant.{f}") for f in ("id", "mcc", "country"))

    def fill(self, request: Request, card: CardRecord, account: AccountRecord) -> None:
        """Put one authorization's values into both vectors (score comes later)."""
        ctx = self.context
        ctx.reset()
        for present in self._present:
            ctx.set_bool(present, True)
        (amount, currency, mcc, channel, method, country, device, ip, three_ds, partial,
         points, timestamp, has_timestamp, merchant_id, account_amount) = self._txn
        ctx.set_int(amount, request.amount_minor)
        ctx.set_string(currency, request.currency)
        ctx.set_string(mcc, request.mcc)
        ctx.set_string(channel, _NAMES["channel"][request.channel])
        ctx.set_string(method, _NAMES["payment_method"][request.payment_method])
        ctx.set_string(country, request.merchant_country)
        ctx.set_string(device, request.device_id)
        ctx.set_string(ip, request.ip)
        ctx.set_string(three_ds, _NAMES["three_ds"][request.three_ds])
        ctx.set_bool(partial, request.partial_ok)
        ctx.set_int(points, request.points_to_redeem)
        ctx.set_timestamp(timestamp, request.timestamp.seconds, request.timestamp.nanos)
        ctx.set_bool(has_timestamp, True)
        ctx.set_string(merchant_id, request.merchant_id)
        ctx.set_int(account_amount, request.amount_minor)  # no FX yet: same currency
        token, status, year, month = self._card
        ctx.set_string(token, card.card_token)
        ctx.set_string(status, _NAMES["card_status"][card.status])
        ctx.set_int(year, card.expiry_year)
        ctx.set_int(month, card.expiry_month)
        kind, a_status, a_currency, balance, available, limit = self._account
        ctx.set_string(kind, _NAMES["kind"][account.kind])
        ctx.set_string(a_status, _NAMES["account_status"][account.status])
        ctx.set_string(a_currency, account.currency)
        ctx.set_int(balance, account.balance)
        ctx.set_int(available, account.available)
        ctx.set_int(limit, account.limit)
        m_id, m_mcc, m_country = self._merchant
        ctx.set_string(m_id, request.merchant_id)
        ctx.set_string(m_mcc, request.mcc)
        ctx.set_string(m_country, request.merchant_country)
        vector = self.features
        for i, read in enumerate(self._readers):
            vector[i] = read(request, card, account)

    def set_score(self, score: float) -> None:
        """Make the model's score visible to policies as `score`."""
        self.context.set_double(self._score, score)
