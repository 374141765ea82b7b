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
from collections.abc import Callable, Collection

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


def _name_table(names: dict[int, str]) -> tuple[str | None, ...]:
    """An enum's names indexed by number (None where a number has none), the form the core's
    fill looks a number up in."""
    table: list[str | None] = [None] * (max(names) + 1)
    for number, name in names.items():
        table[number] = name
    return tuple(table)


# How the filler gathers each context field from the record (request, card, account):
# (policy path, fill kind, key path, enum names). Enum numbers reach policies as names.
_REQUEST, _CARD, _ACCOUNT = 0, 1, 2
_CONTEXT_FIELDS: tuple[tuple[str, str, tuple[int, str], dict[int, str] | None], ...] = (
    ("txn.amount_minor", "int", (_REQUEST, "amount_minor"), None),
    ("txn.currency", "string", (_REQUEST, "currency"), None),
    ("txn.mcc", "string", (_REQUEST, "mcc"), None),
    ("txn.channel", "name", (_REQUEST, "channel"), _CHANNEL),
    ("txn.payment_method", "name", (_REQUEST, "payment_method"), _METHOD),
    ("txn.merchant_country", "string", (_REQUEST, "merchant_country"), None),
    ("txn.device_id", "string", (_REQUEST, "device_id"), None),
    ("txn.ip", "string", (_REQUEST, "ip"), None),
    ("txn.three_ds", "name", (_REQUEST, "three_ds"), _THREE_DS),
    ("txn.partial_ok", "bool", (_REQUEST, "partial_ok"), None),
    ("txn.points_to_redeem", "int", (_REQUEST, "points_to_redeem"), None),
    ("txn.timestamp", "timestamp", (_REQUEST, "timestamp"), None),
    ("txn.merchant_id", "string", (_REQUEST, "merchant_id"), None),
    ("txn.account_amount_minor", "int", (_REQUEST, "amount_minor"), None),  # no FX yet
    ("card.token", "string", (_CARD, "card_token"), None),
    ("card.status", "name", (_CARD, "status"), _CARD_STATUS),
    ("card.expiry_year", "int", (_CARD, "expiry_year"), None),
    ("card.expiry_month", "int", (_CARD, "expiry_month"), None),
    ("account.kind", "name", (_ACCOUNT, "kind"), _KIND),
    ("account.status", "name", (_ACCOUNT, "status"), _ACCOUNT_STATUS),
    ("account.currency", "string", (_ACCOUNT, "currency"), None),
    ("account.balance_minor", "int", (_ACCOUNT, "balance"), None),
    ("account.available_minor", "int", (_ACCOUNT, "available"), None),
    ("account.credit_limit_minor", "int", (_ACCOUNT, "limit"), None),
    ("merchant.id", "string", (_REQUEST, "merchant_id"), None),
    ("merchant.mcc", "string", (_REQUEST, "mcc"), None),
    ("merchant.country", "string", (_REQUEST, "merchant_country"), None),
)
# The same for the model's features that come from the record (the others are zero): the
# MCC as its number, enum-valued fields as their enum numbers.
_MODEL_SOURCES: dict[str, tuple[str, tuple[int, str]]] = {
    "txn.amount_minor": ("feature", (_REQUEST, "amount_minor")),
    "txn.account_amount_minor": ("feature", (_REQUEST, "amount_minor")),
    "txn.mcc": ("feature_int", (_REQUEST, "mcc")),
    "txn.channel": ("feature", (_REQUEST, "channel")),
    "txn.payment_method": ("feature", (_REQUEST, "payment_method")),
    "txn.three_ds": ("feature", (_REQUEST, "three_ds")),
    "txn.partial_ok": ("feature", (_REQUEST, "partial_ok")),
    "txn.points_to_redeem": ("feature", (_REQUEST, "points_to_redeem")),
    "card.status": ("feature", (_CARD, "status")),
    "card.expiry_year": ("feature", (_CARD, "expiry_year")),
    "card.expiry_month": ("feature", (_CARD, "expiry_month")),
    "account.kind": ("feature", (_ACCOUNT, "kind")),
    "account.status": ("feature", (_ACCOUNT, "status")),
    "account.balance_minor": ("feature", (_ACCOUNT, "balance")),
    "account.available_minor": ("feature", (_ACCOUNT, "available")),
    "account.credit_limit_minor": ("feature", (_ACCOUNT, "limit")),
}
assert all(name in _MODEL_SOURCES or name.startswith("features.") for name in MODEL_FEATURES)
# Always present in an authorization's context: the four messages and the timestamp.
_PRESENT = ("txn?", "card?", "account?", "merchant?", "txn.timestamp?")


class DecisionContextFiller:
    """Fills this worker's decision context: the policy's slots and, in the same call, the
    model's features (`MODEL_FEATURES`) in the context's numeric vector after the slots,
    where a model bound with `model_layout()` reads them in place.

    The fill is one call into the core that reads the record (request, card, account) by
    a plan made once (`Activation.fill_from`): each field's key path, slot and kind, enum
    numbers turned into names by per-field tables, each attribute read once however many
    values it feeds. No Python runs per field.

    The context is never reset: what does not vary between authorizations is written once
    here (the presence of txn, card, account, merchant and txn.timestamp; card.country,
    the features message, watch_hits and the model's features.* stay at their zero
    values), and every fill overwrites every other slot but `score`, which the model
    writes when it scores, and `set_score` otherwise.

    A filler made for one policy and model fills only what they read: `policy_slots`, the
    context slots the policy's rules read (`CompiledPolicy.inputs_read`), and
    `model_features`, the features the model reads (`TreeEnsemble.feature_names`); the
    other slots stay at their zero values. None fills everything."""

    def __init__(self, policy_slots: Collection[int] | None = None,
                 model_features: Collection[str] | None = None) -> None:
        builder = DecisionContextBuilder()
        slot = builder.slot
        self.context: Activation = builder.new(extra=len(MODEL_FEATURES))
        self._score = slot("score")
        base = len(builder.layout.slots)
        for path in _PRESENT:
            self.context.set_bool(slot(path), True)
        fields = [f for f in _CONTEXT_FIELDS
                  if policy_slots is None or slot(f[0]) in policy_slots]
        #: The context slots each fill writes.
        self.filled_slots = frozenset(slot(path) for path, _, _, _ in fields)
        targets = [slot(path) for path, _, _, _ in fields]
        kinds = [kind for _, kind, _, _ in fields]
        sources = [source for _, _, source, _ in fields]
        names = [None if table is None else _name_table(table) for _, _, _, table in fields]
        for i, name in enumerate(MODEL_FEATURES):
            if name in _MODEL_SOURCES and (model_features is None or name in model_features):
                kind, source = _MODEL_SOURCES[name]
                targets.append(base + i)
                kinds.append(kind)
                sources.append(source)
                names.append(None)
            else:
                self.context.set_feature(base + i, 0.0)  # velocity features: not yet
        self.plan = self.context.plan(targets, kinds, sources, names)
        #: gather(record): fill the context from (request, card, account) in one call.
        self.gather: Callable[[tuple[Request, CardRecord, AccountRecord]], None] = \
            functools.partial(self.context.fill_from, self.plan)

    @property
    def features(self) -> list[float]:
        """The model's features of the last fill, in MODEL_FEATURES order (a copy)."""
        return self.context.numeric()[context_slots():]

    def fill(self, request: Request, card: CardRecord, account: AccountRecord) -> None:
        """Put one authorization's values into the context, the model's features included,
        and `score` back to zero (the model's score comes later), in one call into the
        core."""
        self.gather((request, card, account))
        self.context.set_double(self._score, 0.0)

    def set_score(self, score: float) -> None:
        """Make the model's score visible to policies as `score`."""
        self.context.set_double(self._score, score)
