"""Accounts and cards as issuers manage them: UpsertAccount, GetAccount, UpsertCard,
SetCardStatus. Validation, the rules between records, and the conversion to the
API's messages; storage is `store`'s.
"""

from __future__ import annotations

import secrets

from payauth.server.clock import Clock, system_clock
from payauth.server.errors import AlreadyExistsError, FailedPreconditionError, NotFoundError
from payauth.server.pan import PanHasher
from payauth.server.store import AccountRecord, CardRecord, HoldRecord, ImmutableFieldError, Store
from payauth.server.validation import (
    DEFAULT_MAX_HOLDS,
    check_get_account,
    check_set_card_status,
    check_upsert_account,
    check_upsert_card,
)
from payauth.v1 import issuer_pb2


def account_message(record: AccountRecord) -> issuer_pb2.Account:
    """The API's view of a stored account."""
    account = issuer_pb2.Account(
        account_id=record.account_id,
        kind=record.kind,
        status=record.status,
        currency=record.currency,
        balance_minor=record.balance,
        credit_limit_minor=record.limit,
        held_minor=record.held,
        available_minor=record.available,
    )
    account.updated_at.FromMilliseconds(record.updated_ms)
    return account


def hold_message(record: HoldRecord) -> issuer_pb2.Hold:
    """The API's view of a stored hold."""
    hold = issuer_pb2.Hold(
        authorization_id=record.authorization_id,
        request_id=record.request_id,
        amount_minor=record.amount,
        merchant_id=record.merchant_id,
    )
    hold.created_at.FromMilliseconds(record.created_ms)
    hold.expires_at.FromMilliseconds(record.expires_ms)
    return hold


def card_message(record: CardRecord) -> issuer_pb2.Card:
    """The API's view of a stored card: its token, never its PAN."""
    return issuer_pb2.Card(
        card_token=record.card_token,
        account_id=record.account_id,
        status=record.status,
        expiry_year=record.expiry_year,
        expiry_month=record.expiry_month,
        has_pan=bool(record.pan_hash),
    )


class Accounts:
    """The issuer's account and card operations."""

    def __init__(self, store: Store, pans: PanHasher, clock: Clock = system_clock) -> None:
        self._store = store
        self._pans = pans
        self._clock = clock

    async def upsert_account(
        self, request: issuer_pb2.UpsertAccountRequest
    ) -> issuer_pb2.UpsertAccountResponse:
        """Create an account or update its status, balance and limit."""
        check_upsert_account(request)
        try:
            record, created = await self._store.upsert_account(
                account_id=request.account_id, kind=request.kind, status=request.status,
                currency=request.currency, balance=request.balance_minor,
                limit=request.credit_limit_minor, now_ms=int(self._clock() * 1000),
            )
        except ImmutableFieldError as exc:
            raise FailedPreconditionError(str(exc), [(exc.field, str(exc))]) from exc
        return issuer_pb2.UpsertAccountResponse(account=account_message(record), created=created)

    async def get_account(
        self, request: issuer_pb2.GetAccountRequest
    ) -> issuer_pb2.GetAccountResponse:
        """An account with its active holds."""
        check_get_account(request)
        found = await self._store.get_account(request.account_id,
                                              request.max_holds or DEFAULT_MAX_HOLDS)
        if found is None:
            raise NotFoundError(f"account {request.account_id} does not exist")
        record, holds, hold_count = found
        return issuer_pb2.GetAccountResponse(account=account_message(record),
                                             holds=[hold_message(h) for h in holds],
                                             hold_count=hold_count)

    async def upsert_card(
        self, request: issuer_pb2.UpsertCardRequest
    ) -> issuer_pb2.UpsertCardResponse:
        """Create a card or update it. A PAN already registered names its card, so an
        upsert by PAN without a token updates that card instead of creating another."""
        check_upsert_card(request)
        if not await self._store.account_exists(request.account_id):
            raise FailedPreconditionError(f"account {request.account_id} does not exist",
                                     [("account_id", "no such account")])
        token = request.card_token
        pan_hash = self._pans.hash(request.pan) if request.pan else ""
        if pan_hash:
            entry = await self._store.card_for_pan(pan_hash)
            owner = entry[0] if entry else None
            if owner and token and owner != token:
                raise AlreadyExistsError("pan is registered to another card",
                                    [("pan", "is registered to another card")])
            token = token or owner or ""
        existing = await self._store.get_card(token) if token else None
        if existing is not None and existing.pan_hash:
            if pan_hash and pan_hash != existing.pan_hash:
                raise FailedPreconditionError(
                    "a card's pan cannot change; register the reissued card under a new token",
                    [("pan", "differs from the pan registered for this card")],
                )
            pan_hash = existing.pan_hash
        record = CardRecord(
            card_token=token or f"ct_{secrets.token_hex(12)}",
            account_id=request.account_id,
            status=request.status,
            expiry_year=request.expiry_year,
            expiry_month=request.expiry_month,
            pan_hash=pan_hash,
        )
        await self._store.put_card(record)
        return issuer_pb2.UpsertCardResponse(card=card_message(record),
                                             created=existing is None)

    async def set_card_status(
        self, request: issuer_pb2.SetCardStatusRequest
    ) -> issuer_pb2.SetCardStatusResponse:
        """Change the status of an existing card."""
        check_set_card_status(request)
        card = await self._store.get_card(request.card_token)
        if card is None:
            raise NotFoundError(f"card {request.card_token} does not exist")
        await self._store.set_card_status(request.card_token, request.status, request.reason,
                                          int(self._clock() * 1000))
        return issuer_pb2.SetCardStatusResponse(card=card_message(
            CardRecord(card.card_token, card.account_id, request.status, card.expiry_year,
                       card.expiry_month, card.pan_hash)))
