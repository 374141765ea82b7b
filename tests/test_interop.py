"""A client in another language that knows only the .proto files can authorize: buf curl
(Go) with the schema compiled from protos/, and again with the schema from reflection."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from payauth.clients import IssuerClient
from tests.conftest import issue_card, open_account, unique
from tests.servers import PayauthProcess

ROOT = Path(__file__).resolve().parent.parent
BUF = ROOT / "node_modules" / ".bin" / "buf"


def _buf_curl(target: str, body: dict, schema: list[str]) -> dict:
    result = subprocess.run(
        [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", *schema,
         "-d", json.dumps(body), f"http://{target}/payauth.v1.Authorizer/Authorize"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_buf_curl_authorizes_from_the_protos_alone(payauth: PayauthProcess,
                                                   issuer: IssuerClient) -> None:
    account = open_account(issuer, 10_000)
    card = issue_card(issuer, account)
    body = {
        "card_token": card, "merchant_id": "m-1", "mcc": "5411", "merchant_country": "US",
        "amount_minor": 2500, "currency": "USD", "channel": "CHANNEL_POS",
        "payment_method": "PAYMENT_METHOD_CARD", "three_ds": "THREE_DS_RESULT_NOT_ATTEMPTED",
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    from_protos = _buf_curl(payauth.target, {**body, "request_id": unique("buf")},
                            ["--schema", "protos"])
    assert (from_protos["decision"], from_protos["isoResponseCode"]) == ("DECISION_APPROVE",
                                                                         "00")
    by_reflection = _buf_curl(payauth.target, {**body, "request_id": unique("buf")}, [])
    assert by_reflection["approvedAmountMinor"] == "2500"
