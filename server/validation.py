"""Field rules of the API's requests, checked before anything is read or written.

Each `check_*` function returns every violation of a request at once (field
path and a description that never quotes a PAN) and raises InvalidArgumentError
when there is any. Reference data comes from maintained packages: currencies
and exponents from `iso4217` (via `money`), countries from `pycountry`; the
Luhn check is `pan`'s (tested against `python-stdnum`'s).
"""

from __future__ import annotations

import functools
import ipaddress
import re

import pycountry
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.timestamp_pb2 import Timestamp

from payauth.server.errors import FieldViolation, InvalidArgumentError
from payauth.server.keys import PARTITIONS, partition_from_authorization_id
from payauth.server.money import CURRENCY_EXPONENTS, MAX_AMOUNT_MINOR
from payauth.server.pan import pan_problem
from payauth.v1 import authorizer_pb2, common_pb2, issuer_pb2, lifecycle_pb2

IDENTIFIER = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
IDENTIFIER_RULE = "1 to 64 characters of A-Z a-z 0-9 _ . : -"
MCC = re.compile(r"[0-9]{4}")


# A dotted-quad IPv4 address exactly as ipaddress.IPv4Address accepts it: four decimal
# octets of 0-255 in ASCII digits, no leading zeros.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def is_ip_address(text: str) -> bool:
    """Whether `text` is an IPv4 or IPv6 address, as `ipaddress` reads them: IPv4 by one
    regular expression (ipaddress parses in Python, microseconds a request), the rest by
    ipaddress itself, remembered."""
    return IPV4.fullmatch(text) is not None or _is_other_ip_address(text)


@functools.lru_cache(maxsize=8192)
def _is_other_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
COUNTRIES = frozenset(c.alpha_2 for c in pycountry.countries)
MAX_DEVICE_ID = 128
MAX_SHORT_TEXT = 64
MAX_REASON = 256
DEFAULT_MAX_HOLDS = 100
MAX_HOLDS = 1000


@functools.cache
def _enum_numbers(enum: EnumTypeWrapper) -> frozenset[int]:
    """An enum's numbers, once (`values()` builds a new list at every call)."""
    return frozenset(enum.values())


class Violations:
    """Collects the violations of one request."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append((field, description))

    def identifier(self, field: str, value: str, required: bool = True) -> None:
        if not value:
            if required:
                self.add(field, "is required")
        elif not IDENTIFIER.fullmatch(value):
            self.add(field, f"must be {IDENTIFIER_RULE}")

    def text(self, field: str, value: str, max_len: int, required: bool = False) -> None:
        if required and not value:
            self.add(field, "is required")
        elif len(value) > max_len:
            self.add(field, f"must be at most {max_len} characters")

    def enum(self, field: str, value: int, enum: EnumTypeWrapper) -> None:
        if value == 0:
            self.add(field, "is required")
        elif value not in _enum_numbers(enum):
            self.add(field, f"{value} is not a known {enum.DESCRIPTOR.name} value")

    def currency(self, field: str, value: str) -> None:
        if not value:
            self.add(field, "is required")
        elif value not in CURRENCY_EXPONENTS:
            self.add(field, "must be an ISO 4217 currency code with a minor unit")

    def amount(self, field: str, value: int, positive: bool) -> None:
        if positive and value <= 0:
            self.add(field, "must be greater than zero")
        elif value < 0:
            self.add(field, "must not be negative")
        elif value > MAX_AMOUNT_MINOR:
            self.add(field, f"must be at most {MAX_AMOUNT_MINOR} minor units")

    def authorization_id(self, field: str, value: str) -> None:
        if not value:
            self.add(field, "is required")
            return
        try:
            partition = partition_from_authorization_id(value)
        except ValueError:
            partition = -1
        if not 0 <= partition < PARTITIONS or not IDENTIFIER.fullmatch(value):
            self.add(field, "is not an authorization id issued by payauth")

    def timestamp(self, field: str, ts: Timestamp, required: bool = True) -> None:
        if not ts.seconds and not ts.nanos:
            if required:
                self.add(field, "is required")
        elif not 0 <= ts.nanos < 1_000_000_000:
            self.add(field, "nanos must be between 0 and 999999999")

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgumentError(self.items)


def check_authorize(request: authorizer_pb2.AuthorizeRequest, now_s: float,
                    max_future_s: int, max_past_s: int) -> None:
    """Raise InvalidArgument listing every rule the request breaks."""
    v = Violations()
    v.identifier("request_id", request.request_id)
    if request.pan and request.card_token:
        v.add("pan", "exactly one of pan and card_token must be set, not both")
        v.add("card_token", "exactly one of pan and card_token must be set, not both")
    elif not request.pan and not request.card_token:
        v.add("pan", "exactly one of pan and card_token must be set")
    elif request.pan:
        problem = pan_problem(request.pan)
        if problem:
            v.add("pan", problem)
    else:
        v.identifier("card_token", request.card_token)
    v.text("merchant_id", request.merchant_id, MAX_SHORT_TEXT, required=True)
    if not MCC.fullmatch(request.mcc):
        v.add("mcc", "must be exactly four digits (ISO 18245)")
    if request.merchant_country not in COUNTRIES:
        v.add("merchant_country", "must be an ISO 3166-1 alpha-2 country code")
    v.amount("amount_minor", request.amount_minor, positive=True)
    v.currency("currency", request.currency)
    v.enum("channel", request.channel, common_pb2.Channel)
    v.enum("payment_method", request.payment_method, common_pb2.PaymentMethod)
    v.enum("three_ds", request.three_ds, common_pb2.ThreeDsResult)
    v.text("device_id", request.device_id, MAX_DEVICE_ID)
    if request.ip and not is_ip_address(request.ip):
        v.add("ip", "must be an IPv4 or IPv6 address")
    if request.points_to_redeem < 0:
        v.add("points_to_redeem", "must not be negative")
    v.text("acquirer_id", request.acquirer_id, MAX_SHORT_TEXT)
    v.text("terminal_id", request.terminal_id, MAX_SHORT_TEXT)
    if request.original_authorization_id:
        v.authorization_id("original_authorization_id", request.original_authorization_id)
    if not request.HasField("timestamp"):
        v.add("timestamp", "is required")
    else:
        ts = request.timestamp
        if not 0 <= ts.nanos < 1_000_000_000:
            v.add("timestamp", "nanos must be between 0 and 999999999")
        elif ts.seconds > now_s + max_future_s:
            v.add("timestamp", f"is more than {max_future_s} s ahead of the server clock")
        elif ts.seconds < now_s - max_past_s:
            v.add("timestamp", f"is more than {max_past_s} s behind the server clock")
    v.raise_if_any()


def check_upsert_account(request: issuer_pb2.UpsertAccountRequest) -> None:
    """Raise InvalidArgument listing every rule the request breaks."""
    v = Violations()
    v.identifier("account_id", request.account_id)
    v.enum("kind", request.kind, common_pb2.AccountKind)
    v.enum("status", request.status, common_pb2.AccountStatus)
    v.currency("currency", request.currency)
    v.amount("balance_minor", request.balance_minor, positive=False)
    v.amount("credit_limit_minor", request.credit_limit_minor, positive=False)
    if request.kind == common_pb2.ACCOUNT_KIND_DEBIT and request.credit_limit_minor:
        v.add("credit_limit_minor", "must be zero for a DEBIT account")
    v.raise_if_any()


def check_upsert_card(request: issuer_pb2.UpsertCardRequest) -> None:
    """Raise InvalidArgument listing every rule the request breaks."""
    v = Violations()
    if request.card_token:
        v.identifier("card_token", request.card_token)
    elif not request.pan:
        v.add("card_token", "is required when no pan is given")
    if request.pan:
        problem = pan_problem(request.pan)
        if problem:
            v.add("pan", problem)
    v.identifier("account_id", request.account_id)
    v.enum("status", request.status, common_pb2.CardStatus)
    if not 2000 <= request.expiry_year <= 2100:
        v.add("expiry_year", "must be a four-digit year between 2000 and 2100")
    if not 1 <= request.expiry_month <= 12:
        v.add("expiry_month", "must be between 1 and 12")
    v.raise_if_any()


def check_set_card_status(request: issuer_pb2.SetCardStatusRequest) -> None:
    """Raise InvalidArgument listing every rule the request breaks."""
    v = Violations()
    v.identifier("card_token", request.card_token)
    v.enum("status", request.status, common_pb2.CardStatus)
    v.text("reason", request.reason, MAX_REASON)
    v.raise_if_any()


def check_get_account(request: issuer_pb2.GetAccountRequest) -> None:
    """Raise InvalidArgument listing every rule the request breaks."""
    v = Violations()
    v.identifier("account_id", request.account_id)
    if not 0 <= request.max_holds <= MAX_HOLDS:
        v.add("max_holds", f"must be between 0 and {MAX_HOLDS}")
    v.raise_if_any()


def check_capture(request: lifecycle_pb2.CaptureRequest) -> None:
    """Raise InvalidArgument listing every rule the request breaks."""
    v = Violations()
    v.identifier("request_id", request.request_id)
    v.authorization_id("authorization_id", request.authorization_id)
    v.amount("amount_minor", request.amount_minor, positive=True)
    v.currency("currency", request.currency)
    if request.tip_amount_minor < 0 or request.tip_amount_minor > request.amount_minor:
        v.add("tip_amount_minor", "must be between 0 and amount_minor")
    if request.capture_sequence_number < 0 or request.capture_sequence_count < 0:
        v.add("capture_sequence_number", "must not be negative")
    elif request.capture_sequence_count and (
            request.capture_sequence_number > request.capture_sequence_count):
        v.add("capture_sequence_number", "must not exceed capture_sequence_count")
    v.text("merchant_id", request.merchant_id, MAX_SHORT_TEXT)
    v.text("settlement_reference", request.settlement_reference, MAX_SHORT_TEXT)
    v.timestamp("timestamp", request.timestamp, required=False)
    v.raise_if_any()


def check_reverse(request: lifecycle_pb2.ReverseRequest) -> None:
    """Raise InvalidArgument listing every rule the request breaks."""
    v = Violations()
    v.identifier("request_id", request.request_id)
    if request.authorization_id:
        v.authorization_id("authorization_id", request.authorization_id)
    elif request.original_request_id:
        v.identifier("original_request_id", request.original_request_id)
    else:
        v.add("authorization_id", "authorization_id or original_request_id is required")
    v.amount("amount_minor", request.amount_minor, positive=False)
    v.amount("original_amount_minor", request.original_amount_minor, positive=False)
    if request.currency:
        v.currency("currency", request.currency)
    elif request.amount_minor:
        v.add("currency", "is required with amount_minor")
    v.text("merchant_id", request.merchant_id, MAX_SHORT_TEXT)
    v.timestamp("timestamp", request.timestamp, required=False)
    v.raise_if_any()


def check_refund(request: lifecycle_pb2.RefundRequest) -> None:
    """Raise InvalidArgument listing every rule the request breaks."""
    v = Violations()
    v.identifier("request_id", request.request_id)
    v.authorization_id("authorization_id", request.authorization_id)
    if request.capture_id:
        v.identifier("capture_id", request.capture_id)
    v.amount("amount_minor", request.amount_minor, positive=True)
    v.currency("currency", request.currency)
    v.text("merchant_id", request.merchant_id, MAX_SHORT_TEXT)
    v.text("reason", request.reason, MAX_REASON)
    v.timestamp("timestamp", request.timestamp, required=False)
    v.raise_if_any()


def check_extend_hold(request: lifecycle_pb2.ExtendHoldRequest) -> None:
    """Raise InvalidArgument listing every rule the request breaks."""
    v = Violations()
    v.identifier("request_id", request.request_id)
    v.authorization_id("authorization_id", request.authorization_id)
    v.timestamp("expires_at", request.expires_at)
    v.raise_if_any()
