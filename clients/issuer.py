"""Clients of `payauth.v1.IssuerControl`, the service issuer systems call.

Every unary call takes its request message, or keyword fields that build it (a `datetime` is
accepted for Timestamp fields), plus `timeout=` to override the client's deadline. All unary calls
are idempotent and retried on UNAVAILABLE and DEADLINE_EXCEEDED, except UpsertCard without a
`card_token`, where the server mints a new card on every call; see `payauth.clients.retry`.
The streams (`stream_policies`, `watch_decisions`) are never retried.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

from payauth.v1 import events_pb2, issuer_pb2, policy_pb2

from .channel import AsyncServiceClient, ServiceClient
from .rpc import Rpc

_SERVICE = issuer_pb2.DESCRIPTOR.services_by_name["IssuerControl"]


def _has_card_token(request: issuer_pb2.UpsertCardRequest) -> bool:
    # Without a token the server generates one, so a repeated call would create a second card.
    return bool(request.card_token)


# The method table both twins call through.
STREAM_POLICIES = Rpc(_SERVICE, "StreamPolicies")
UPSERT_ACCOUNT = Rpc(_SERVICE, "UpsertAccount", idempotent=True)
GET_ACCOUNT = Rpc(_SERVICE, "GetAccount", idempotent=True)
UPSERT_CARD = Rpc(_SERVICE, "UpsertCard", idempotent=_has_card_token)
SET_CARD_STATUS = Rpc(_SERVICE, "SetCardStatus", idempotent=True)
UPDATE_LISTS = Rpc(_SERVICE, "UpdateLists", idempotent=True)
SET_FX_RATES = Rpc(_SERVICE, "SetFxRates", idempotent=True)
LOAD_MODEL = Rpc(_SERVICE, "LoadModel", idempotent=True)
BACKTEST = Rpc(_SERVICE, "Backtest", idempotent=True)
WATCH_DECISIONS = Rpc(_SERVICE, "WatchDecisions")


class IssuerClient(ServiceClient):
    """Blocking client of the IssuerControl service; owns its channel."""

    service_name = _SERVICE.full_name

    def upsert_account(
        self,
        request: issuer_pb2.UpsertAccountRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> issuer_pb2.UpsertAccountResponse:
        """Creates an account or updates its status, balance and credit limit."""
        return self._unary(UPSERT_ACCOUNT, request, fields, timeout)

    def get_account(
        self,
        request: issuer_pb2.GetAccountRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> issuer_pb2.GetAccountResponse:
        """Reads an account with its active holds and available amount."""
        return self._unary(GET_ACCOUNT, request, fields, timeout)

    def upsert_card(
        self,
        request: issuer_pb2.UpsertCardRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> issuer_pb2.UpsertCardResponse:
        """Creates or updates a card; retried only with a `card_token`, lest a retry mint a twin."""
        return self._unary(UPSERT_CARD, request, fields, timeout)

    def set_card_status(
        self,
        request: issuer_pb2.SetCardStatusRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> issuer_pb2.SetCardStatusResponse:
        """Blocks, reports lost or stolen, or reactivates a card."""
        return self._unary(SET_CARD_STATUS, request, fields, timeout)

    def update_lists(
        self,
        request: policy_pb2.UpdateListsRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> policy_pb2.UpdateListsResponse:
        """Adds entries to or removes them from hot lists and block lists."""
        return self._unary(UPDATE_LISTS, request, fields, timeout)

    def set_fx_rates(
        self,
        request: policy_pb2.SetFxRatesRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> policy_pb2.SetFxRatesResponse:
        """Sets the FX rates used to convert purchase amounts to account currency."""
        return self._unary(SET_FX_RATES, request, fields, timeout)

    def load_model(
        self,
        request: policy_pb2.LoadModelRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> policy_pb2.LoadModelResponse:
        """Loads a scoring model (LightGBM or XGBoost dump)."""
        return self._unary(LOAD_MODEL, request, fields, timeout)

    def backtest(
        self,
        request: policy_pb2.BacktestRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> policy_pb2.BacktestResponse:
        """Replays recorded decisions under a policy version and reports what would change."""
        return self._unary(BACKTEST, request, fields, timeout)

    def stream_policies(
        self,
        updates: Iterable[policy_pb2.PolicyUpdate],
        *,
        timeout: float | None = None,
    ) -> Iterator[policy_pb2.PolicyAck]:
        """Sends versioned rule sets and yields one ack per update; a bad one gets an error ack.

        No deadline unless `timeout` is given, since a policy session lasts as long as it is fed.
        """
        return self._stream(STREAM_POLICIES, iter(updates), timeout)

    def watch_decisions(
        self,
        request: policy_pb2.WatchDecisionsRequest,
        *,
        timeout: float | None = None,
    ) -> Iterator[events_pb2.DecisionEvent]:
        """Yields decision and lifecycle events as they commit; resume with an event's cursor.

        No deadline unless `timeout` is given, since a watch lasts as long as its subscriber.
        """
        return self._stream(WATCH_DECISIONS, request, timeout)


class AsyncIssuerClient(AsyncServiceClient):
    """Asyncio client of the IssuerControl service; owns its channel."""

    service_name = _SERVICE.full_name

    async def upsert_account(
        self,
        request: issuer_pb2.UpsertAccountRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> issuer_pb2.UpsertAccountResponse:
        """Creates an account or updates its status, balance and credit limit."""
        return await self._unary(UPSERT_ACCOUNT, request, fields, timeout)

    async def get_account(
        self,
        request: issuer_pb2.GetAccountRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> issuer_pb2.GetAccountResponse:
        """Reads an account with its active holds and available amount."""
        return await self._unary(GET_ACCOUNT, request, fields, timeout)

    async def upsert_card(
        self,
        request: issuer_pb2.UpsertCardRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> issuer_pb2.UpsertCardResponse:
        """Creates or updates a card; retried only with a `card_token`, lest a retry mint a twin."""
        return await self._unary(UPSERT_CARD, request, fields, timeout)

    async def set_card_status(
        self,
        request: issuer_pb2.SetCardStatusRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> issuer_pb2.SetCardStatusResponse:
        """Blocks, reports lost or stolen, or reactivates a card."""
        return await self._unary(SET_CARD_STATUS, request, fields, timeout)

    async def update_lists(
        self,
        request: policy_pb2.UpdateListsRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> policy_pb2.UpdateListsResponse:
        """Adds entries to or removes them from hot lists and block lists."""
        return await self._unary(UPDATE_LISTS, request, fields, timeout)

    async def set_fx_rates(
        self,
        request: policy_pb2.SetFxRatesRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> policy_pb2.SetFxRatesResponse:
        """Sets the FX rates used to convert purchase amounts to account currency."""
        return await self._unary(SET_FX_RATES, request, fields, timeout)

    async def load_model(
        self,
        request: policy_pb2.LoadModelRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> policy_pb2.LoadModelResponse:
        """Loads a scoring model (LightGBM or XGBoost dump)."""
        return await self._unary(LOAD_MODEL, request, fields, timeout)

    async def backtest(
        self,
        request: policy_pb2.BacktestRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> policy_pb2.BacktestResponse:
        """Replays recorded decisions under a policy version and reports what would change."""
        return await self._unary(BACKTEST, request, fields, timeout)

    def stream_policies(
        self,
        updates: AsyncIterable[policy_pb2.PolicyUpdate] | Iterable[policy_pb2.PolicyUpdate],
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[policy_pb2.PolicyAck]:
        """Sends versioned rule sets and yields one ack per update; a bad one gets an error ack.

        No deadline unless `timeout` is given, since a policy session lasts as long as it is fed.
        """
        return self._stream(STREAM_POLICIES, updates, timeout)

    def watch_decisions(
        self,
        request: policy_pb2.WatchDecisionsRequest,
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[events_pb2.DecisionEvent]:
        """Yields decision and lifecycle events as they commit; resume with an event's cursor.

        No deadline unless `timeout` is given, since a watch lasts as long as its subscriber.
        """
        return self._stream(WATCH_DECISIONS, request, timeout)
