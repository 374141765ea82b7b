"""The loyalty engine's program side without a server: the direct context fill equals the
message fill on generated purchases, and what conditions see is what the docs say."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from payauth.server.loyalty_programs import (
    _BUILDER,
    _LAYOUT,
    CompiledProgram,
    ContextFiller,
    MemberState,
    Purchase,
    TierSpec,
)
from payauth.v1 import common_pb2

text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
purchases = st.builds(
    Purchase, amount_minor=st.integers(0, 10**15), currency=st.sampled_from(["USD", "BRL", ""]),
    mcc=st.from_regex(r"[0-9]{4}", fullmatch=True) | st.just(""), merchant_id=text,
    merchant_country=st.sampled_from(["US", "BR", ""]),
    channel=st.sampled_from(list(common_pb2.Channel.values()) + [99]),
    payment_method=st.sampled_from(list(common_pb2.PaymentMethod.values())),
    at_ms=st.integers(0, 4102444800000))
members = st.builds(
    MemberState, member_id=text, available=st.integers(-10**12, 10**12),
    birth_month=st.integers(0, 12), enrolled_ms=st.integers(0, 253402300799000),
    qualifying_by_day=st.just({}))
tiers = st.none() | st.builds(TierSpec, id=text, rank=st.integers(0, 5),
                              qualifying_points=st.integers(0, 10**6),
                              earn_multiplier_bps=st.just(10_000))


@settings(max_examples=300, deadline=None)
@given(purchase=purchases, member=members, tier=tiers, variant=st.sampled_from(["", "A", "B"]),
       zone=st.sampled_from(["UTC", "America/Sao_Paulo", "Asia/Kolkata", "Pacific/Kiritimati"]))
def test_direct_fill_equals_the_message_fill(purchase: Purchase, member: MemberState,
                                             tier: TierSpec | None, variant: str,
                                             zone: str) -> None:
    local = datetime.fromtimestamp(purchase.at_ms / 1000, UTC).astimezone(ZoneInfo(zone))
    direct = ContextFiller().fill(purchase, member, tier, variant, local)
    message = CompiledProgram.context_message(purchase, member, tier, variant, local)
    expected = _BUILDER.from_message(message)
    for slot in _LAYOUT.slots:
        assert direct.get(slot.index) == expected.get(slot.index), slot.path
