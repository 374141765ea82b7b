"""The demo data set `make run` loads through the API: one issuer's accounts and
cards in currencies of 0, 2 and 3 decimals, cards in every declining state, a
policy of a few CEL rules, a LightGBM risk model trained on generated data at
load time (never a downloaded artifact), and a loyalty program whose member is
the USD account. Upserts with fixed identifiers, so loading it again changes
nothing but balances.
"""

from __future__ import annotations

import time

from payauth.clients import IssuerClient, LoyaltyClient
from payauth.server.money import format_minor
from payauth.v1 import common_pb2, issuer_pb2, loyalty_pb2, policy_pb2

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


P = policy_pb2
MODEL_FEATURES = ["txn.amount_minor", "txn.channel", "txn.three_ds", "account.available_minor"]


def demo_policy(version: int) -> policy_pb2.PolicyUpdate:
    """The demo issuer's policy: fraud rules, a step-up, a shadow rule and a score limit."""
    def rule(rule_id: str, condition: str, action: int, reason: str,
             **fields: object) -> policy_pb2.PolicyRule:
        fields.setdefault("mode", P.POLICY_RULE_MODE_ACTIVE)
        return P.PolicyRule(id=rule_id, condition=condition, action=action, reason=reason,
                            **fields)

    return P.PolicyUpdate(
        update_id=f"demo-{version}", policy_id="demo-issuer", version=version,
        evaluation=P.EVALUATION_SEMANTICS_FIRST_MATCH,
        decline_score_threshold=0.95,
        score_decline_response_code=common_pb2.RESPONSE_CODE_59_SUSPECTED_FRAUD,
        rules=[
            rule("ecom-large-unauthenticated",
                 'txn.channel == "ECOM" && txn.three_ds != "AUTHENTICATED" '
                 "&& txn.amount_minor > 200000",
                 P.POLICY_RULE_ACTION_DECLINE, "large online purchase without 3-D Secure",
                 response_code=common_pb2.RESPONSE_CODE_59_SUSPECTED_FRAUD, priority=10),
            rule("atm-cash-cap", 'txn.channel == "ATM" && txn.amount_minor > 100000',
                 P.POLICY_RULE_ACTION_DECLINE, "cash withdrawal above the daily cap",
                 response_code=common_pb2.RESPONSE_CODE_61_EXCEEDS_AMOUNT_LIMIT, priority=20),
            rule("sca-above-500", 'txn.three_ds == "NOT_ATTEMPTED" && txn.amount_minor > 50000',
                 P.POLICY_RULE_ACTION_STEP_UP, "strong customer authentication above 500.00",
                 response_code=common_pb2.RESPONSE_CODE_1A_ADDITIONAL_AUTHENTICATION_REQUIRED,
                 priority=30),
            rule("watch-gambling", 'txn.mcc == "7995"', P.POLICY_RULE_ACTION_TAG,
                 "gambling merchant", tag="gambling", priority=40,
                 mode=P.POLICY_RULE_MODE_SHADOW),
        ])


def train_demo_model() -> bytes:
    """A small LightGBM model trained on generated purchases, as a text dump."""
    import lightgbm as lgb
    import numpy as np

    rng = np.random.default_rng(2026)
    n = 5_000
    amount = rng.lognormal(8.5, 1.2, n).round()
    channel = rng.choice([common_pb2.CHANNEL_POS, common_pb2.CHANNEL_ECOM,
                          common_pb2.CHANNEL_CONTACTLESS], n)
    three_ds = rng.choice([common_pb2.THREE_DS_RESULT_NOT_ATTEMPTED,
                           common_pb2.THREE_DS_RESULT_AUTHENTICATED], n)
    available = rng.integers(0, 2_000_000, n).astype(float)
    risk = (0.02 + 0.3 * (channel == common_pb2.CHANNEL_ECOM)
            * (three_ds != common_pb2.THREE_DS_RESULT_AUTHENTICATED)
            * (amount > 50_000) + 0.2 * (amount > available))
    fraud = rng.random(n) < risk
    data = np.column_stack([amount, channel, three_ds, available])
    booster = lgb.train({"objective": "binary", "num_leaves": 15, "max_depth": 6, "verbose": -1},
                        lgb.Dataset(data, fraud.astype(int), feature_name=MODEL_FEATURES),
                        num_boost_round=40)
    return booster.model_to_string().encode()


def demo_program(version: int) -> loyalty_pb2.LoyaltyProgram:
    """The demo loyalty program: 1 point per USD 1.00 (1 point = USD 0.01), double at
    groceries on weekends, triple in the member's birthday month, a Silver tier at 1,000
    points, and a coffee challenge open for a year from the load (`version` is its Unix
    time)."""
    lp = loyalty_pb2
    return lp.LoyaltyProgram(
        program_id="demo-rewards", version=version, name="Demo rewards",
        points_currency="PTS", home_currency="USD",
        point_values=[lp.PointValue(currency="USD", value_mantissa=1)],
        earn_rates=[lp.EarnRate(currency="USD", points_mantissa=1, points_scale=2)],
        earning_rules=[
            lp.EarningRule(id="weekend-groceries", multiplier_bps=20_000,
                           condition='txn.mcc == "5411" && '
                                     'txn.timestamp.getDayOfWeek("UTC") in [0, 6]',
                           reason="2x on groceries at weekends"),
            lp.EarningRule(id="birthday-month", multiplier_bps=30_000,
                           condition='member.birth_month == txn.timestamp.getMonth("UTC") + 1',
                           reason="3x in your birthday month"),
        ],
        tiers=[lp.LoyaltyTier(id="member", name="Member", rank=0),
               lp.LoyaltyTier(id="silver", name="Silver", rank=1, qualifying_points=1000,
                              earn_multiplier_bps=12_500)],
        challenges=[lp.LoyaltyChallenge(
            id="coffee-5", name="5 coffees", condition='txn.mcc == "5814"',
            goal=lp.CHALLENGE_GOAL_PURCHASE_COUNT, target_count=5, bonus_points=200,
            starts_at={"seconds": version - 86_400},
            ends_at={"seconds": version + 365 * 86_400})],
        points_expiry_days=365)


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
        version = int(time.time())
        model = issuer.load_model(model_id="demo-risk", version=version,
                                  format=P.MODEL_FORMAT_LIGHTGBM_TEXT, model=train_demo_model(),
                                  activate=True, timeout=60)
        (ack,) = issuer.stream_policies(iter([demo_policy(version)]), timeout=60)
        if not ack.accepted:
            raise RuntimeError(f"the demo policy was refused: {ack}")
        lines.append(f"Risk model demo-risk ({model.num_trees} trees, features "
                     f"{', '.join(MODEL_FEATURES)}) and policy demo-issuer "
                     f"({len(demo_policy(version).rules)} rules, see server/demo.py) active.")
    with LoyaltyClient(target, timeout=10) as loyalty:
        loyalty.upsert_program(program=demo_program(version))
        loyalty.upsert_member(member=loyalty_pb2.LoyaltyMember(
            program_id="demo-rewards", member_id="demo-member", account_id="demo-acct-usd"))
        lines.append("Loyalty program demo-rewards: demo-member earns through demo-acct-usd "
                     "(its cards' approvals earn points; capture posts them).")
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
        "Points balance:",
        f"  grpcurl -plaintext -d '{{\"program_id\":\"demo-rewards\",\"member_id\":"
        f"\"demo-member\"}}' {target} payauth.v1.Loyalty/GetBalance",
        "Python: see docs/api.md (payauth.clients.AcquirerClient, LoyaltyClient).",
    ]
    return "\n".join(lines)
