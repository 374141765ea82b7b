"""The demo data set `make run` loads through the API: one issuer's accounts and
cards in currencies of 0, 2 and 3 decimals, and cards in every declining state.
Upserts with fixed identifiers, so loading it again changes nothing but balances.
"""

from __future__ import annotations

from payauth.clients import IssuerClient
from payauth.server.money import format_minor
from payauth.v1 import common_pb2, issuer_pb2

DEBIT, CREDIT = common_pb2.ACCOUNT_KIND_DEBIT, common_pb2.ACCOUNT_KIND_CREDIT
ACTIVE_ACCOUNT = common_pb2.ACCOUNT_STATUS_ACTIVE

# account id, kind, status, currency, balance, credit limit
ACCOUNTS = (
    ("demo-acct-usd", DEBIT, ACTIVE_ACCOUNT, "USD", 100_000, 0),
    ("demo-acct-brl-credit", CREDIT, ACTIVE_ACCOUNT, "BRL", 0, 500_000),
    ("demo-acct-jpy", DEBIT, ACTIVE_ACCOUNT, "JPY", 50_000, 0),
    ("demo-acct-bhd", DEBIT, ACTIVE_ACCOUNT, "BHD", 250_000, 0),
    ("demo-acct-closed", DEBIT, common_pb2.ACCOUNT_STATUS_CLOSED, "USD", 100_000, 0),
)

# card token, PAN (the networks' public test numbers, or none), account, status
CARDS = (
    ("demo-card-usd", "4111111111111111", "demo-acct-usd", common_pb2.CARD_STATUS_ACTIVE),
    ("demo-card-brl", "5555555555554444", "demo-acct-brl-credit",
     common_pb2.CARD_STATUS_ACTIVE),
    ("demo-card-jpy", "", "demo-acct-jpy", common_pb2.CARD_STATUS_ACTIVE),
    ("demo-card-bhd", "", "demo-acct-bhd", common_pb2.CARD_STATUS_ACTIVE),
    ("demo-card-lost", "", "demo-acct-usd", common_pb2.CARD_STATUS_LOST),
    ("demo-card-stolen", "", "demo-acct-usd", common_pb2.CARD_STATUS_STOLEN),
    ("demo-card-blocked", "", "demo-acct-usd", common_pb2.CARD_STATUS_BLOCKED),
    ("demo-card-expired", "", "demo-acct-usd", common_pb2.CARD_STATUS_EXPIRED),
    ("demo-card-closed-account", "", "demo-acct-closed", common_pb2.CARD_STATUS_ACTIVE),
)


def load_demo(target: str) -> str:
    """Load the demo data through the issuer API at `target`; return how to call it."""
    with IssuerClient(target, timeout=10) as issuer:
        issuer.wait_until_serving(30)
        lines = ["Demo data loaded. Accounts:"]
        for account_id, kind, status, currency, balance, limit in ACCOUNTS:
            account = issuer.upsert_account(issuer_pb2.UpsertAccountRequest(
                account_id=account_id, kind=kind, status=status, currency=currency,
                balance_minor=balance, credit_limit_minor=limit)).account
            lines.append(f"  {account_id:22} {common_pb2.AccountKind.Name(kind)[13:]:6} "
                         f"{common_pb2.AccountStatus.Name(status)[15:]:6} available "
                         f"{format_minor(account.available_minor, currency)}")
        lines.append("Cards (card_token -> account, status):")
        for token, pan, account_id, status in CARDS:
            issuer.upsert_card(issuer_pb2.UpsertCardRequest(
                card_token=token, pan=pan, account_id=account_id, status=status,
                expiry_year=2030, expiry_month=12))
            lines.append(f"  {token:26} {account_id:22} {common_pb2.CardStatus.Name(status)[12:]}")
    lines += [
        "",
        "Authorize 25.00 USD on demo-card-usd (buf comes with `npm ci`; grpcurl takes the "
        "same JSON):",
        f"  npx buf curl --protocol grpc --http2-prior-knowledge http://{target}"
        "/payauth.v1.Authorizer/Authorize \\",
        "    -d '{\"request_id\":\"demo-'$(date +%s%N)'\",\"card_token\":\"demo-card-usd\","
        "\"merchant_id\":\"m-1\",\"mcc\":\"5411\",\"merchant_country\":\"US\","
        "\"amount_minor\":2500,\"currency\":\"USD\",\"channel\":\"CHANNEL_POS\","
        "\"payment_method\":\"PAYMENT_METHOD_CARD\",\"three_ds\":\"THREE_DS_RESULT_NOT_ATTEMPTED\","
        "\"timestamp\":\"'$(date -u +%FT%TZ)'\"}'",
        f"  grpcurl -plaintext -d '<same JSON>' {target} payauth.v1.Authorizer/Authorize",
        "Health:",
        f"  grpcurl -plaintext {target} grpc.health.v1.Health/Check",
        "Python: see docs/api.md (payauth.clients.AcquirerClient).",
    ]
    return "\n".join(lines)
