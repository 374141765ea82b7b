"""Decisions as the acquirer sees them: ISO 8583 response codes, reasons, and the
mapping from a commit's funds outcome to a response.

The commit Function decides funds (approved, partial, insufficient...) and
stores only that outcome beside the rest of the response; `apply_outcome`
rebuilds the same response from it, for the first answer and for every replay.
"""

from __future__ import annotations

from payauth.v1 import authorizer_pb2, common_pb2

ISO_CODES: dict[int, str] = {
    number: name.split("_")[2]
    for name, number in common_pb2.ResponseCode.items()
    if number != common_pb2.RESPONSE_CODE_UNSPECIFIED
}

CARD_STATUS_DECLINES: dict[int, tuple[int, str]] = {
    common_pb2.CARD_STATUS_BLOCKED: (common_pb2.RESPONSE_CODE_62_RESTRICTED_CARD,
                                     "card is blocked"),
    common_pb2.CARD_STATUS_LOST: (common_pb2.RESPONSE_CODE_41_LOST_CARD,
                                  "card is reported lost"),
    common_pb2.CARD_STATUS_STOLEN: (common_pb2.RESPONSE_CODE_43_STOLEN_CARD,
                                    "card is reported stolen"),
    common_pb2.CARD_STATUS_EXPIRED: (common_pb2.RESPONSE_CODE_54_EXPIRED_CARD,
                                     "card is expired"),
}

# outcome of a commit that did not simply approve -> (decision, response code, reason id,
# reason text).
_OUTCOMES: dict[str, tuple[int, int, str, str]] = {
    "partial": (common_pb2.DECISION_APPROVE, common_pb2.RESPONSE_CODE_10_PARTIAL_APPROVAL,
                "funds.partial", "approved for the available amount only"),
    "insufficient": (common_pb2.DECISION_DECLINE, common_pb2.RESPONSE_CODE_51_INSUFFICIENT_FUNDS,
                     "funds.insufficient", "available funds or credit do not cover the amount"),
    "account_closed": (common_pb2.DECISION_DECLINE, common_pb2.RESPONSE_CODE_46_CLOSED_ACCOUNT,
                       "account.status", "account is closed"),
    "account_frozen": (common_pb2.DECISION_DECLINE, common_pb2.RESPONSE_CODE_62_RESTRICTED_CARD,
                       "account.status", "account is frozen"),
    "account_missing": (common_pb2.DECISION_DECLINE,
                        common_pb2.RESPONSE_CODE_14_INVALID_CARD_NUMBER,
                        "account.unknown", "card's account does not exist"),
    "currency_mismatch": (common_pb2.DECISION_DECLINE,
                          common_pb2.RESPONSE_CODE_57_NOT_PERMITTED_TO_CARDHOLDER,
                          "txn.currency", "purchase currency differs from the account's"),
    "reversed_early": (common_pb2.DECISION_DECLINE, common_pb2.RESPONSE_CODE_05_DO_NOT_HONOUR,
                       "authorization.reversed", "the acquirer reversed this request before "
                       "its authorization arrived"),
    "increment_unknown": (common_pb2.DECISION_DECLINE,
                          common_pb2.RESPONSE_CODE_12_INVALID_TRANSACTION,
                          "authorization.unknown", "no authorization of this card's account "
                          "has that id"),
    "increment_closed": (common_pb2.DECISION_DECLINE,
                         common_pb2.RESPONSE_CODE_12_INVALID_TRANSACTION,
                         "authorization.closed", "the original authorization holds nothing any "
                         "more (captured, reversed or expired)"),
    "points_insufficient": (common_pb2.DECISION_DECLINE,
                            common_pb2.RESPONSE_CODE_51_INSUFFICIENT_FUNDS,
                            "loyalty.insufficient_points", "the member has fewer points "
                            "available than points_to_redeem"),
    "points_blocked": (common_pb2.DECISION_DECLINE,
                       common_pb2.RESPONSE_CODE_57_NOT_PERMITTED_TO_CARDHOLDER,
                       "loyalty.redemption_blocked", "the member may not redeem (fraud hold, "
                       "suspended or closed)"),
    "points_limit": (common_pb2.DECISION_DECLINE,
                     common_pb2.RESPONSE_CODE_65_EXCEEDS_FREQUENCY_LIMIT,
                     "loyalty.abuse_limit", "the redemption exceeds the program's abuse limits; "
                     "the member is on fraud hold"),
    "points_no_member": (common_pb2.DECISION_DECLINE,
                         common_pb2.RESPONSE_CODE_57_NOT_PERMITTED_TO_CARDHOLDER,
                         "loyalty.not_member", "the account's loyalty member is not enrolled"),
}


def early_reversal_decline(response: authorizer_pb2.AuthorizeResponse
                           ) -> authorizer_pb2.AuthorizeResponse:
    """The decline of an authorization whose reversal arrived first."""
    _, code, rule_id, text = _OUTCOMES["reversed_early"]
    return decline(response, code, rule_id, text)


def set_code(response: authorizer_pb2.AuthorizeResponse, decision: int, code: int) -> None:
    """Set the decision and the response code in both its forms."""
    response.decision = decision
    response.response_code = code
    response.iso_response_code = ISO_CODES[code]


def decline(response: authorizer_pb2.AuthorizeResponse, code: int, rule_id: str,
            text: str) -> authorizer_pb2.AuthorizeResponse:
    """Make `response` a decline with one reason; return it."""
    set_code(response, common_pb2.DECISION_DECLINE, code)
    response.reasons.add(rule_id=rule_id, text=text)
    response.approved_amount_minor = 0
    return response


def apply_outcome(response: authorizer_pb2.AuthorizeResponse, outcome: str, approved: int,
                  authorization_id: str, decided_ms: int) -> authorizer_pb2.AuthorizeResponse:
    """Complete a response with what the commit decided; 'final' leaves it as it is."""
    response.decided_at.FromMilliseconds(decided_ms)
    if outcome == "final":
        return response
    if outcome == "approved":
        set_code(response, common_pb2.DECISION_APPROVE, common_pb2.RESPONSE_CODE_00_APPROVED)
    else:
        decision, code, rule_id, text = _OUTCOMES[outcome]
        set_code(response, decision, code)
        # The commit's outcome decided, so its reason goes first (most decisive first).
        earlier = list(response.reasons)
        del response.reasons[:]
        response.reasons.add(rule_id=rule_id, text=text)
        response.reasons.extend(earlier)
    response.approved_amount_minor = approved
    if approved:
        response.authorization_id = authorization_id
    return response
