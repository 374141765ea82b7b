"""The gRPC surface: one servicer per service of payauth.v1, named like the RPCs.

Servicers only adapt: they hand requests to the pipeline or to `accounts` and
let `@translate_errors` turn refusals into statuses. RPCs that later parts of
payauth serve answer UNIMPLEMENTED with a message naming what is missing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from redis.exceptions import RedisError

from payauth.server.accounts import Accounts
from payauth.server.authorize import AuthorizePipeline
from payauth.server.authorize_stream import authorize_stream
from payauth.server.errors import PayauthError, translate_errors, unimplemented
from payauth.server.lifecycle import Lifecycle
from payauth.server.loyalty import LoyaltyEngine
from payauth.server.metrics import count_decision
from payauth.server.policies import IssuerPolicies
from payauth.v1 import (
    authorizer_pb2,
    authorizer_pb2_grpc,
    issuer_pb2,
    issuer_pb2_grpc,
    lifecycle_pb2,
    loyalty_pb2,
    loyalty_pb2_grpc,
    policy_pb2,
)


async def _refuse(context: grpc.aio.ServicerContext, what: str) -> None:
    error = unimplemented(what)
    await context.abort(error.code, error.message)


class Authorizer(authorizer_pb2_grpc.AuthorizerServicer):
    """payauth.v1.Authorizer: the acquirer's calls."""

    def __init__(self, pipeline: AuthorizePipeline, lifecycle: Lifecycle) -> None:
        self._pipeline = pipeline
        self._lifecycle = lifecycle

    @translate_errors
    async def Authorize(  # noqa: N802 - gRPC method name
        self, request: authorizer_pb2.AuthorizeRequest, context: grpc.aio.ServicerContext
    ) -> authorizer_pb2.AuthorizeResponse:
        return count_decision(await self._pipeline.authorize(request), "Authorize")

    async def AuthorizeStream(  # noqa: N802
        self, request_iterator: AsyncIterator[authorizer_pb2.AuthorizeRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        await authorize_stream(self._pipeline, request_iterator, context)

    @translate_errors
    async def Capture(  # noqa: N802
        self, request: lifecycle_pb2.CaptureRequest, context: grpc.aio.ServicerContext
    ) -> lifecycle_pb2.CaptureResponse:
        return await self._lifecycle.capture(request)

    @translate_errors
    async def Reverse(  # noqa: N802
        self, request: lifecycle_pb2.ReverseRequest, context: grpc.aio.ServicerContext
    ) -> lifecycle_pb2.ReverseResponse:
        return await self._lifecycle.reverse(request)

    @translate_errors
    async def Refund(  # noqa: N802
        self, request: lifecycle_pb2.RefundRequest, context: grpc.aio.ServicerContext
    ) -> lifecycle_pb2.RefundResponse:
        return await self._lifecycle.refund(request)

    @translate_errors
    async def ExtendHold(  # noqa: N802
        self, request: lifecycle_pb2.ExtendHoldRequest, context: grpc.aio.ServicerContext
    ) -> lifecycle_pb2.ExtendHoldResponse:
        return await self._lifecycle.extend_hold(request)

    async def UpsertMerchantPolicy(  # noqa: N802
        self, request: lifecycle_pb2.UpsertMerchantPolicyRequest,
        context: grpc.aio.ServicerContext,
    ) -> None:
        await _refuse(context, "UpsertMerchantPolicy (merchant collaboration on soft declines)")


class IssuerControl(issuer_pb2_grpc.IssuerControlServicer):
    """payauth.v1.IssuerControl: the issuer's calls."""

    def __init__(self, accounts: Accounts, policies: IssuerPolicies) -> None:
        self._accounts = accounts
        self._policies = policies

    @translate_errors
    async def UpsertAccount(  # noqa: N802
        self, request: issuer_pb2.UpsertAccountRequest, context: grpc.aio.ServicerContext
    ) -> issuer_pb2.UpsertAccountResponse:
        return await self._accounts.upsert_account(request)

    @translate_errors
    async def GetAccount(  # noqa: N802
        self, request: issuer_pb2.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> issuer_pb2.GetAccountResponse:
        return await self._accounts.get_account(request)

    @translate_errors
    async def UpsertCard(  # noqa: N802
        self, request: issuer_pb2.UpsertCardRequest, context: grpc.aio.ServicerContext
    ) -> issuer_pb2.UpsertCardResponse:
        return await self._accounts.upsert_card(request)

    @translate_errors
    async def SetCardStatus(  # noqa: N802
        self, request: issuer_pb2.SetCardStatusRequest, context: grpc.aio.ServicerContext
    ) -> issuer_pb2.SetCardStatusResponse:
        return await self._accounts.set_card_status(request)

    async def StreamPolicies(  # noqa: N802
        self, request_iterator: AsyncIterator[policy_pb2.PolicyUpdate],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[policy_pb2.PolicyAck]:
        try:
            async for update in request_iterator:
                yield await self._policies.apply(update)
        except RedisError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"the state store did not take the policy ({exc}); send the "
                                "update again")

    async def UpdateLists(self, request, context):  # noqa: N802, ANN001
        await _refuse(context, "UpdateLists (hot lists and block lists)")

    async def SetFxRates(self, request, context):  # noqa: N802, ANN001
        await _refuse(context, "SetFxRates (currency conversion)")

    @translate_errors
    async def LoadModel(  # noqa: N802
        self, request: policy_pb2.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> policy_pb2.LoadModelResponse:
        return await self._policies.load_model(request)

    async def Backtest(self, request, context):  # noqa: N802, ANN001
        await _refuse(context, "Backtest (policy backtests over recorded decisions)")

    async def WatchDecisions(self, request, context):  # noqa: N802, ANN001
        await _refuse(context, "WatchDecisions (the live decision feed)")


class Loyalty(loyalty_pb2_grpc.LoyaltyServicer):
    """payauth.v1.Loyalty: the loyalty system's calls."""

    def __init__(self, engine: LoyaltyEngine) -> None:
        self._engine = engine

    @translate_errors
    async def UpsertProgram(  # noqa: N802
        self, request: loyalty_pb2.UpsertProgramRequest, context: grpc.aio.ServicerContext
    ) -> loyalty_pb2.UpsertProgramResponse:
        return await self._engine.upsert_program(request)

    @translate_errors
    async def UpsertMember(  # noqa: N802
        self, request: loyalty_pb2.UpsertMemberRequest, context: grpc.aio.ServicerContext
    ) -> loyalty_pb2.UpsertMemberResponse:
        return await self._engine.upsert_member(request)

    @translate_errors
    async def GetBalance(  # noqa: N802
        self, request: loyalty_pb2.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> loyalty_pb2.GetBalanceResponse:
        return await self._engine.get_balance(request)

    @translate_errors
    async def Earn(  # noqa: N802
        self, request: loyalty_pb2.EarnRequest, context: grpc.aio.ServicerContext
    ) -> loyalty_pb2.EarnResponse:
        return await self._engine.earn(request)

    @translate_errors
    async def Redeem(  # noqa: N802
        self, request: loyalty_pb2.RedeemRequest, context: grpc.aio.ServicerContext
    ) -> loyalty_pb2.RedeemResponse:
        return await self._engine.redeem(request)

    @translate_errors
    async def Adjust(  # noqa: N802
        self, request: loyalty_pb2.AdjustRequest, context: grpc.aio.ServicerContext
    ) -> loyalty_pb2.AdjustResponse:
        return await self._engine.adjust(request)

    @translate_errors
    async def ListActivity(  # noqa: N802
        self, request: loyalty_pb2.ListActivityRequest, context: grpc.aio.ServicerContext
    ) -> loyalty_pb2.ListActivityResponse:
        return await self._engine.list_activity(request)

    @translate_errors
    async def GetProgramFigures(  # noqa: N802
        self, request: loyalty_pb2.GetProgramFiguresRequest, context: grpc.aio.ServicerContext
    ) -> loyalty_pb2.GetProgramFiguresResponse:
        return await self._engine.program_figures(request)

    async def WatchBalance(  # noqa: N802
        self, request: loyalty_pb2.WatchBalanceRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[loyalty_pb2.BalanceUpdate]:
        try:
            async for update in self._engine.watch_balance(request):
                yield update
        except PayauthError as exc:
            await context.abort_with_status(exc.to_status())
        except RedisError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"the state store failed; resume from the last cursor: {exc}")
