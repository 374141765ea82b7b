"""How long a hold lives and how far it may be over-captured, by merchant category.

Card networks let lodging and vehicle rental hold funds for the length of a
stay (up to 31 days) while ordinary purchases lapse within days, and let
restaurants, bars and taxis capture more than authorized to add a tip. These
are the defaults; `--hold-ttl-by-mcc` replaces the lifetimes.
"""

from __future__ import annotations

from dataclasses import dataclass

DAY_S = 24 * 3600
LONG_STAY_MCCS = frozenset(
    {f"{m:04d}" for m in range(3351, 3442)}  # vehicle rental companies
    | {f"{m:04d}" for m in range(3501, 4000)}  # lodging (hotel chains)
    | {"7011", "7512", "7513", "7519", "4411"}  # hotels, car and truck rental, RV, cruise lines
)
LONG_STAY_TTL_S = 31 * DAY_S
# Most a hold may ever be extended to, counted from its placement.
MAX_LIFETIME_S = 31 * DAY_S

# Over-capture tolerance in basis points of the approved amount.
TIP_MCCS = frozenset({"5812", "5813", "5814", "4121", "7230", "7298"})
TIP_TOLERANCE_BPS = 2_000
LONG_STAY_TOLERANCE_BPS = 1_500


@dataclass(frozen=True)
class HoldRules:
    """Hold lifetime and over-capture tolerance for each merchant category."""

    default_ttl_s: int = 7 * DAY_S
    ttl_by_mcc: tuple[tuple[str, int], ...] = ()

    def ttl_s(self, mcc: str) -> int:
        """Seconds a new hold for this MCC lives unless captured, reversed or extended."""
        for code, seconds in self.ttl_by_mcc:
            if code == mcc:
                return seconds
        if mcc in LONG_STAY_MCCS:
            return max(LONG_STAY_TTL_S, self.default_ttl_s)
        return self.default_ttl_s

    def max_lifetime_s(self, mcc: str) -> int:
        """The latest a hold may be extended to, in seconds after its placement."""
        return max(MAX_LIFETIME_S, self.ttl_s(mcc))

    @staticmethod
    def tolerance_bps(mcc: str) -> int:
        """How much more than approved may be captured, in basis points."""
        if mcc in TIP_MCCS:
            return TIP_TOLERANCE_BPS
        if mcc in LONG_STAY_MCCS:
            return LONG_STAY_TOLERANCE_BPS
        return 0


def parse_ttl_by_mcc(text: str) -> tuple[tuple[str, int], ...]:
    """Parse 'MCC=SECONDS,MCC=SECONDS' (for example '7011=2678400,5812=86400')."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        mcc, sep, seconds = item.partition("=")
        if not sep or len(mcc) != 4 or not mcc.isdigit() or not seconds.isdigit():
            raise ValueError(f"--hold-ttl-by-mcc: {item!r} is not MCC=SECONDS")
        if int(seconds) <= 0:
            raise ValueError(f"--hold-ttl-by-mcc: {item!r} must be positive")
        pairs.append((mcc, int(seconds)))
    return tuple(pairs)
