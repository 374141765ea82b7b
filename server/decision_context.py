"""The decision context of one authorization, filled once for the core.

Policies read it as the CEL variables `txn`, `card`, `account`, `merchant`,
`features` and `score` (protos/payauth/v1/context.proto); scoring models read
the numeric part of the same fields, named by the same paths, from the context's
numeric vector (`Activation`), where the filler writes them after the context's slots
in the same call. One filler per worker reuses its context for every request:
Authorize fills it and evaluates the core without awaiting in between, so no two
requests ever share it at once.

String fields a model can read are given natural numeric codes: the MCC as its
number, and enum-valued fields (channel, payment method, 3-D Secure result,
card and account states) as their payauth.v1 enum numbers.

Velocity features are not computed yet (they come with the features stage): they read
as zero and `has(features.x)` is false.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

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

_CHANNEL = _NAMES["channel"]
_METHOD = _NAMES["payment_method"]
_THREE_DS = _NAMES["three_ds"]
_CARD_STATUS = _NAMES["card_status"]
_ACCOUNT_STATUS = _NAMES["account_status"]
_KIND = _NAMES["kind"]

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


@functools.cache
def context_slots() -> int:
    """How many slots the decision context has (the model's features come after them)."""
    return len(DecisionContextBuilder().layout.slots)


def model_layout() -> dict[str, int]:
    """Where a bound model reads each feature: in the decision context's numeric vector,
    after the context's own slots, in MODEL_FEATURES order."""
    base = context_slots()
    return {name: base + i for name, i in MODEL_LAYOUT.items()}


def model_width() -> int:
    """The length of the decision context's numeric vector."""
    return context_slots() + len(MODEL_LAYOUT)


class DecisionContextFiller:
    """Fills this worker's decision context: the policy's slots and, in the same call, the
    model's features (`MODEL_FEATURES`) in the context's numeric vector after the slots,
    where a model bound with `model_layout()` reads them in place."""

    def __init__(self) -> None:
        builder = DecisionContextBuilder()
        slot = builder.slot
        self.context: Activation = builder.new(extra=len(MODEL_FEATURES))
        self._score = slot("score")
        base = len(builder.layout.slots)
        paths = (
            ("txn?", "bool"), ("card?", "bool"), ("account?", "bool"), ("merchant?", "bool"),
            ("txn.amount_minor", "int"), ("txn.currency", "string"), ("txn.mcc", "string"),
            ("txn.channel", "string"), ("txn.payment_method", "string"),
            ("txn.merchant_country", "string"), ("txn.device_id", "string"),
            ("txn.ip", "string"), ("txn.three_ds", "string"), ("txn.partial_ok", "bool"),
            ("txn.points_to_redeem", "int"), ("txn.timestamp", "timestamp"),
            ("txn.timestamp?", "bool"), ("txn.merchant_id", "string"),
            ("txn.account_amount_minor", "int"),
            ("card.token", "string"), ("card.status", "string"), ("card.expiry_year", "int"),
            ("card.expiry_month", "int"),
            ("account.kind", "string"), ("account.status", "string"),
            ("account.currency", "string"), ("account.balance_minor", "int"),
            ("account.available_minor", "int"), ("account.credit_limit_minor", "int"),
            ("merchant.id", "string"), ("merchant.mcc", "string"), ("merchant.country", "string"),
        )
        targets = [slot(path) for path, _ in paths] + \
            [base + i for i in range(len(MODEL_FEATURES))]
        kinds = [kind for _, kind in paths] + ["feature"] * len(MODEL_FEATURES)
        self._plan = self.context.plan(targets, kinds)
        self._fill = self.context.fill

    @property
    def features(self) -> list[float]:
        """The model's features of the last fill, in MODEL_FEATURES order (a copy)."""
        return self.context.numeric()[context_slots():]

    def fill(self, request: Request, card: CardRecord, account: AccountRecord) -> None:
        """Put one authorization's values into the context, the model's features included
        (score comes later), in one call into the core."""
        ctx = self.context
        ctx.reset()
        timestamp = request.timestamp
        mcc = request.mcc
        amount = request.amount_minor
        channel = request.channel
        method = request.payment_method
        three_ds = request.three_ds
        partial = request.partial_ok
        points = request.points_to_redeem
        merchant_id = request.merchant_id
        country = request.merchant_country
        c_status = card.status
        year = card.expiry_year
        month = card.expiry_month
        kind = account.kind
        a_status = account.status
        balance = account.balance
        available = account.available
        limit = account.limit
        self._fill(self._plan, (
            True, True, True, True,
            amount, request.currency, mcc, _CHANNEL[channel], _METHOD[method], country,
            request.device_id, request.ip, _THREE_DS[three_ds], partial, points,
            (timestamp.seconds, timestamp.nanos), True, merchant_id,
            amount,  # no FX yet: same currency
            card.card_token, _CARD_STATUS[c_status], year, month,
            _KIND[kind], _ACCOUNT_STATUS[a_status], account.currency, balance, available,
            limit,
            merchant_id, mcc, country,
            # MODEL_FEATURES, in order
            amount, amount, int(mcc), channel, method, three_ds, partial, points,
            c_status, year, month, kind, a_status, balance, available, limit,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ))

    def set_score(self, score: float) -> None:
        """Make the model's score visible to policies as `score`."""
        self.context.set_double(self._score, score)
