"""The bulk fill of a decision context (`Activation.fill`, and `fill_from` a record), its
numeric vector read in place by models, and the one-call
`CompiledPolicy.decide`/`evaluate(context, model)`."""

from __future__ import annotations

import math

import pytest

from payauth.core import DecisionContextBuilder
from payauth.core.cel_eval import Activation


def test_fill_matches_the_typed_setters() -> None:
    b = DecisionContextBuilder()
    slot = b.slot
    bulk, one = b.new(extra=2), b.new(extra=2)
    n = bulk.n_slots
    plan = bulk.plan(
        [slot("txn.amount_minor"), slot("txn.currency"), slot("txn.partial_ok"),
         slot("txn.timestamp"), slot("features.card_avg_ticket_minor"), slot("watch_hits"),
         n + 1],
        ["int", "string", "bool", "timestamp", "double", "any", "feature"])
    bulk.fill(plan, (1562, "BRL", True, (1732628814, 5), 2.5, ["DEVICE"], 0.25))
    one.set_int(slot("txn.amount_minor"), 1562)
    one.set_string(slot("txn.currency"), "BRL")
    one.set_bool(slot("txn.partial_ok"), True)
    one.set_timestamp(slot("txn.timestamp"), 1732628814, 5)
    one.set_double(slot("features.card_avg_ticket_minor"), 2.5)
    one.set(slot("watch_hits"), ["DEVICE"])
    one.set_feature(n + 1, 0.25)
    for i in range(n):
        assert bulk.get(i) == one.get(i)
    a, c = bulk.numeric(), one.numeric()
    assert len(a) == bulk.width == n + 2
    assert all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, c, strict=True))
    assert a[slot("txn.amount_minor")] == 1562.0
    assert a[slot("txn.partial_ok")] == 1.0
    assert math.isnan(a[slot("txn.currency")])
    assert math.isnan(a[n]) and a[n + 1] == 0.25
    bulk.fill(plan, (1, "x", False, 7, 0.0, [], 1.0))
    assert bulk.get(slot("watch_hits")) == []
    assert bulk.get(slot("txn.timestamp")).seconds == 7


def test_fill_rejects_bad_plans_and_values() -> None:
    ctx = Activation(["int", "string"], 1)
    with pytest.raises(ValueError):
        ctx.plan([0], ["nope"])
    with pytest.raises(IndexError):
        ctx.plan([2], ["int"])
    with pytest.raises(IndexError):
        ctx.plan([0], ["feature"])
    plan = ctx.plan([0, 1, 2], ["int", "string", "feature"])
    with pytest.raises(ValueError):
        ctx.fill(plan, (1, "a"))
    with pytest.raises(TypeError):
        ctx.fill(plan, (1, 2, 0.0))
    with pytest.raises(OverflowError):
        ctx.fill(plan, (2**70, "a", 0.0))
    with pytest.raises(ValueError):
        Activation(["int"]).fill(plan, (1, "a", 0.0))


def test_fill_from_gathers_what_fill_is_given() -> None:
    """A plan with key paths reads the record in C: dict items, attributes of other
    objects, tuple items, each container once; the result is `fill`'s."""
    b = DecisionContextBuilder()
    slot = b.slot
    n = b.new().n_slots

    class Card:
        status = "ACTIVE"

    targets = [slot("txn.amount_minor"), slot("txn.currency"), slot("txn.partial_ok"),
               slot("txn.timestamp"), slot("card.status"), slot("watch_hits"), n]
    kinds = ["int", "string", "bool", "timestamp", "string", "any", "feature"]
    sources = [("txn", "amount_minor"), ("txn", "currency"), ("txn", "partial_ok"),
               ("txn", "ts"), ("card", "status"), "watch_hits", ("risk", 1)]
    record = {"txn": {"amount_minor": 1562, "currency": "BRL", "partial_ok": True,
                      "ts": (1732628814, 5)},
              "card": Card(), "watch_hits": ["DEVICE"], "risk": (0.5, 0.25)}
    gathered, given = b.new(extra=1), b.new(extra=1)
    plan = gathered.plan(targets, kinds, sources)
    assert plan.n_groups == 3  # txn, card, risk
    assert plan.sources[5] == ("watch_hits",)
    gathered.fill_from(plan, record)
    given.fill(given.plan(targets, kinds),
               (1562, "BRL", True, (1732628814, 5), "ACTIVE", ["DEVICE"], 0.25))
    for i in range(n):
        assert gathered.get(i) == given.get(i)
    a, c = gathered.numeric(), given.numeric()
    assert all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, c, strict=True))
    with pytest.raises(KeyError):
        gathered.fill_from(plan, {**record, "txn": {"amount_minor": 1}})
    with pytest.raises(AttributeError):
        gathered.fill_from(plan, {**record, "card": object()})
    with pytest.raises(ValueError):
        gathered.fill_from(gathered.plan(targets, kinds), record)  # no sources
    with pytest.raises(ValueError):
        gathered.plan(targets, kinds, sources[:-1])
    with pytest.raises(ValueError):
        gathered.plan(targets, kinds, sources[:-1] + [()])


def test_model_reads_the_context_in_place_and_decide_agrees() -> None:
    from benchmarks.core import payauth_side, workload
    from payauth.core import load_model

    lgb = pytest.importorskip("lightgbm")
    del lgb
    x, y = workload.training_set(2000)
    booster = workload.train_lightgbm(x, y)
    policy = payauth_side.compile_workload_policy()
    d = payauth_side.PayauthDecider(policy, booster.model_to_string())
    model = load_model(booster.model_to_string()).bind(d.vector_layout, width=d.width)
    for record in workload.make_records(200, seed=3):
        ctx = d.fill(record)
        assert model.probability_of(ctx) == model.probability_of(d.vector(record))
        p = model.probability_of(ctx)
        ref = d.builder.new(extra=len(workload.RISK_FEATURES))
        d._make_fill(ref, policy.decide, model)["fill"](record)
        ref.set_double(d.score_slot, p)
        expected = policy.evaluate(ref)
        got = policy.evaluate(ctx, model)
        assert (got.decision, got.response_code, got.rule, got.score, got.matched,
                got.shadow_matched, got.errored) == \
            (expected.decision, expected.response_code, expected.rule, expected.score,
             expected.matched, expected.shadow_matched, expected.errored)
        assert policy.decide(ctx, model) == (expected.decision, expected.response_code)
        assert d.decide(record) == (expected.decision, expected.response_code)
        plan = ref.plan(*zip(*d.fill_plans["fill"], strict=True))
        assert policy.decide(ref, model, plan, record) == \
            (expected.decision, expected.response_code)


def test_fill_from_names_numbers_reads_digits_and_timestamps() -> None:
    """"name" stores a number's name from the plan's table, "feature_int" reads a string of
    digits as its number (as int() does), a timestamp may be a protobuf Timestamp, and a
    key path several values name is read once per fill."""
    from google.protobuf.timestamp_pb2 import Timestamp

    b = DecisionContextBuilder()
    slot = b.slot
    n = b.new().n_slots
    reads: list[str] = []

    class Request:
        channel = 2
        mcc = "0742"
        ts = Timestamp(seconds=1732628814, nanos=7)

        @property
        def amount(self) -> int:
            reads.append("amount")
            return 1562

    channels = (None, "POS", "ECOM")
    targets = [slot("txn.channel"), n, slot("txn.mcc"), n + 1, slot("txn.timestamp"),
               slot("txn.amount_minor"), slot("txn.account_amount_minor"), n + 2]
    kinds = ["name", "feature", "string", "feature_int", "timestamp", "int", "int", "feature"]
    sources = [(0, "channel"), (0, "channel"), (0, "mcc"), (0, "mcc"), (0, "ts"),
               (0, "amount"), (0, "amount"), (0, "amount")]
    names = [channels] + [None] * 7
    ctx = b.new(extra=3)
    plan = ctx.plan(targets, kinds, sources, names)
    assert plan.n_shared == 3 and plan.names[0] == channels
    ctx.fill_from(plan, (Request(),))
    assert reads == ["amount"]
    assert ctx.get(slot("txn.channel")) == "ECOM"
    assert ctx.get(slot("txn.mcc")) == "0742"
    stamp = ctx.get(slot("txn.timestamp"))
    assert (stamp.seconds, stamp.nanos) == (1732628814, 7)
    assert ctx.get(slot("txn.account_amount_minor")) == 1562
    assert ctx.numeric()[n:] == [2.0, 742.0, 1562.0]
    # `fill` names numbers too, and "feature_int" takes what int() takes.
    ctx.fill(plan, (1, True, "x", " 12 ", (5, 0), 1, 2, 3))
    assert ctx.get(slot("txn.channel")) == "POS"
    assert ctx.numeric()[n:] == [1.0, 12.0, 3.0]
    for bad in (0, 3, -1, 2**70, "2"):
        with pytest.raises(KeyError):
            ctx.fill(plan, (bad, 0, "x", "1", 0, 1, 2, 3))
    with pytest.raises(ValueError):
        ctx.fill(plan, (1, 0, "x", "", 0, 1, 2, 3))
    with pytest.raises(ValueError):
        ctx.plan(targets, kinds, sources)  # a name without a table
    with pytest.raises(ValueError):
        ctx.plan(targets, kinds, sources, [channels] * 8)  # tables on other kinds
    with pytest.raises(TypeError):
        ctx.plan(targets, kinds, sources, [(None, 1)] + [None] * 7)
    with pytest.raises(IndexError):
        ctx.fill_from(ctx.plan([n], ["feature"], [(3,)]), (1, 2))


def test_fill_from_dicts_in_any_order_and_strings_interned_later() -> None:
    """A plan remembers where each key sat in the last record's dicts and which strings
    were policy constants; records whose dicts change order, whose keys are equal but
    other objects, or whose strings become constants later, still fill exactly."""
    import random

    from payauth.core.cel_compiler import decision_compiler

    b = DecisionContextBuilder()
    slot = b.slot
    fields = [("amount_minor", "int", "txn.amount_minor"),
              ("currency", "string", "txn.currency"),
              ("device_id", "string", "txn.device_id"),
              ("partial_ok", "bool", "txn.partial_ok"),
              ("channel", "name", "txn.channel")]
    channels = (None, "POS", "ECOM")
    targets = [slot(path) for _, _, path in fields]
    kinds = [kind for _, kind, _ in fields]
    names = [channels if kind == "name" else None for _, kind, _ in fields]
    gathered, given = b.new(), b.new()
    plan = gathered.plan(targets, kinds, [("txn", key) for key, _, _ in fields], names)
    direct = given.plan(targets, kinds, None, names)
    rng = random.Random(7)
    currencies = ["BRL", "USD", "X" + "Y" * 3]  # the last a str made at run time
    for n in range(300):
        values = {"amount_minor": rng.randrange(10**9), "currency": rng.choice(currencies),
                  "device_id": f"dev-{rng.randrange(5)}", "partial_ok": rng.random() < 0.5,
                  "channel": rng.choice((1, 2))}
        keys = list(values)
        if n % 3 == 1:
            rng.shuffle(keys)
        if n % 5 == 2:  # equal keys, other objects
            keys = ["".join(list(k)) for k in keys]
        txn = {k: values[k.strip()] for k in keys}
        if n % 7 == 3:  # an entry moved to the end
            txn["currency"] = txn.pop("currency")
        record = {"noise": n, "txn": txn} if n % 2 else {"txn": txn}
        gathered.fill_from(plan, record)
        given.fill(direct, tuple(values[key] for key, _, _ in fields))
        for target in targets:
            assert gathered.get(target) == given.get(target), (n, target)
    # A string already seen becomes a policy constant: equal either way.
    late = "".join(["LATE", "CUR"])
    record = {"txn": {"amount_minor": 1, "currency": late, "device_id": "d",
                      "partial_ok": False, "channel": 1}}
    gathered.fill_from(plan, record)
    rule = decision_compiler().compile('txn.currency == "LATECUR" && txn.channel == "POS"')
    gathered.fill_from(plan, record)
    assert rule.evaluate(gathered) is True
    record["txn"]["currency"] = "".join(["LATE", "CUR"])
    gathered.fill_from(plan, record)
    assert rule.evaluate(gathered) is True
    record["txn"]["currency"] = "LATECUS"
    gathered.fill_from(plan, record)
    assert rule.evaluate(gathered) is False
    with pytest.raises(TypeError):
        gathered.fill_from(plan, {"txn": {**record["txn"], "currency": None}})
    with pytest.raises(KeyError):
        gathered.fill_from(plan, {"txn": {k: v for k, v in record["txn"].items()
                                          if k != "device_id"}})
