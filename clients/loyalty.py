"""Clients of `payauth.v1.Loyalty`, the service loyalty systems call.

Every unary call takes its request message, or keyword fields that build it (a `datetime` is
accepted for Timestamp fields), plus `timeout=` to override the client's deadline. All unary calls
are idempotent (Earn, Redeem and Adjust by their `request_id`, the rest by nature) and retried on
UNAVAILABLE and DEADLINE_EXCEEDED; see `payauth.clients.retry`. `watch_balance` is never retried.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from payauth.v1 import loyalty_pb2

from .channel import AsyncServiceClient, ServiceClient
from .rpc import Rpc

_SERVICE = loyalty_pb2.DESCRIPTOR.services_by_name["Loyalty"]

# The method table both twins call through.
UPSERT_PROGRAM = Rpc(_SERVICE, "UpsertProgram", idempotent=True)
UPSERT_MEMBER = Rpc(_SERVICE, "UpsertMember", idempotent=True)
GET_BALANCE = Rpc(_SERVICE, "GetBalance", idempotent=True)
EARN = Rpc(_SERVICE, "Earn", idempotent=True)
REDEEM = Rpc(_SERVICE, "Redeem", idempotent=True)
ADJUST = Rpc(_SERVICE, "Adjust", idempotent=True)
LIST_ACTIVITY = Rpc(_SERVICE, "ListActivity", idempotent=True)
WATCH_BALANCE = Rpc(_SERVICE, "WatchBalance")
GET_PROGRAM_FIGURES = Rpc(_SERVICE, "GetProgramFigures", idempotent=True)


class LoyaltyClient(ServiceClient):
    """Blocking client of the Loyalty service; owns its channel."""

    service_name = _SERVICE.full_name

    def upsert_program(
        self,
        request: loyalty_pb2.UpsertProgramRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> loyalty_pb2.UpsertProgramResponse:
        """Creates or replaces a loyalty program as a whole, versioned."""
        return self._unary(UPSERT_PROGRAM, request, fields, timeout)

    def upsert_member(
        self,
        request: loyalty_pb2.UpsertMemberRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> loyalty_pb2.UpsertMemberResponse:
        """Enrolls a member in a program, or updates its profile."""
        return self._unary(UPSERT_MEMBER, request, fields, timeout)

    def get_balance(
        self,
        request: loyalty_pb2.GetBalanceRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> loyalty_pb2.GetBalanceResponse:
        """Reads a member's balance, tier and suspension state."""
        return self._unary(GET_BALANCE, request, fields, timeout)

    def earn(
        self,
        request: loyalty_pb2.EarnRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> loyalty_pb2.EarnResponse:
        """Credits points for a purchase the loyalty system reports (idempotent by request_id)."""
        return self._unary(EARN, request, fields, timeout)

    def redeem(
        self,
        request: loyalty_pb2.RedeemRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> loyalty_pb2.RedeemResponse:
        """Spends points from the member's available balance (idempotent by request_id)."""
        return self._unary(REDEEM, request, fields, timeout)

    def adjust(
        self,
        request: loyalty_pb2.AdjustRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> loyalty_pb2.AdjustResponse:
        """Credits or debits points by hand, or changes a suspension (idempotent by request_id)."""
        return self._unary(ADJUST, request, fields, timeout)

    def list_activity(
        self,
        request: loyalty_pb2.ListActivityRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> loyalty_pb2.ListActivityResponse:
        """Lists one page of a member's ledger entries, newest first."""
        return self._unary(LIST_ACTIVITY, request, fields, timeout)

    def get_program_figures(
        self,
        request: loyalty_pb2.GetProgramFiguresRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> loyalty_pb2.GetProgramFiguresResponse:
        """Reads a program's figures, per A/B variant and in total."""
        return self._unary(GET_PROGRAM_FIGURES, request, fields, timeout)

    def watch_balance(
        self,
        request: loyalty_pb2.WatchBalanceRequest,
        *,
        timeout: float | None = None,
    ) -> Iterator[loyalty_pb2.BalanceUpdate]:
        """Yields a member's balance after each change; resume with an update's cursor.

        No deadline unless `timeout` is given, since a watch lasts as long as its subscriber.
        """
        return self._stream(WATCH_BALANCE, request, timeout)


class AsyncLoyaltyClient(AsyncServiceClient):
    """Asyncio client of the Loyalty service; owns its channel."""

    service_name = _SERVICE.full_name

    async def upsert_program(
        self,
        request: loyalty_pb2.UpsertProgramRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> loyalty_pb2.UpsertProgramResponse:
        """Creates or replaces a loyalty program as a whole, versioned."""
        return await self._unary(UPSERT_PROGRAM, request, fields, timeout)

    async def upsert_member(
        self,
        request: loyalty_pb2.UpsertMemberRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> loyalty_pb2.UpsertMemberResponse:
        """Enrolls a member in a program, or updates its profile."""
        return await self._unary(UPSERT_MEMBER, request, fields, timeout)

    async def get_balance(
        self,
        request: loyalty_pb2.GetBalanceRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> loyalty_pb2.GetBalanceResponse:
        """Reads a member's balance, tier and suspension state."""
        return await self._unary(GET_BALANCE, request, fields, timeout)

    async def earn(
        self,
        request: loyalty_pb2.EarnRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> loyalty_pb2.EarnResponse:
        """Credits points for a purchase the loyalty system reports (idempotent by request_id)."""
        return await self._unary(EARN, request, fields, timeout)

    async def redeem(
        self,
        request: loyalty_pb2.RedeemRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> loyalty_pb2.RedeemResponse:
        """Spends points from the member's available balance (idempotent by request_id)."""
        return await self._unary(REDEEM, request, fields, timeout)

    async def adjust(
        self,
        request: loyalty_pb2.AdjustRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> loyalty_pb2.AdjustResponse:
        """Credits or debits points by hand, or changes a suspension (idempotent by request_id)."""
        return await self._unary(ADJUST, request, fields, timeout)

    async def list_activity(
        self,
        request: loyalty_pb2.ListActivityRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> loyalty_pb2.ListActivityResponse:
        """Lists one page of a member's ledger entries, newest first."""
        return await self._unary(LIST_ACTIVITY, request, fields, timeout)

    async def get_program_figures(
        self,
        request: loyalty_pb2.GetProgramFiguresRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> loyalty_pb2.GetProgramFiguresResponse:
        """Reads a program's figures, per A/B variant and in total."""
        return await self._unary(GET_PROGRAM_FIGURES, request, fields, timeout)

    def watch_balance(
        self,
        request: loyalty_pb2.WatchBalanceRequest,
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[loyalty_pb2.BalanceUpdate]:
        """Yields a member's balance after each change; resume with an update's cursor.

        No deadline unless `timeout` is given, since a watch lasts as long as its subscriber.
        """
        return self._stream(WATCH_BALANCE, request, timeout)
