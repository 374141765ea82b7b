"""`payauth reconcile`: every account's and every loyalty member's books must balance.

For each account, the stored balance must equal the sum of the balance changes
in its ledger, the stored held amount the sum of the held changes, and also
the sum of what its active holds still hold; held is never negative. For each
loyalty member, the available and pending points must equal the sums of the
changes in its points ledger. Any difference is reported, never corrected: a
difference means a bug or a tampered store, and a person must look.
"""

from __future__ import annotations

from dataclasses import dataclass

from payauth.server.loyalty_store import LoyaltyStore
from payauth.server.store import Store


@dataclass(frozen=True)
class Discrepancy:
    """One account whose books do not balance."""

    account_id: str
    what: str
    stored: int
    expected: int
    subject: str = "account"

    def __str__(self) -> str:
        return (f"{self.subject} {self.account_id}: {self.what} is {self.stored}, its books "
                f"say {self.expected}")


async def reconcile(store: Store) -> tuple[int, list[Discrepancy]]:
    """Check every account and loyalty member; return how many were checked and what does
    not balance."""
    found: list[Discrepancy] = []
    account_ids = await store.account_ids()
    for account_id in account_ids:
        books = await store.account_books(account_id)
        if books is None:  # removed while we looked
            continue
        if books.balance != books.ledger_balance:
            found.append(Discrepancy(account_id, "balance", books.balance, books.ledger_balance))
        if books.held != books.ledger_held:
            found.append(Discrepancy(account_id, "held (ledger)", books.held, books.ledger_held))
        if books.held != books.holds_held:
            found.append(Discrepancy(account_id, "held (active holds)", books.held,
                                     books.holds_held))
        if books.held < 0:
            found.append(Discrepancy(account_id, "held (negative)", books.held, 0))
    members = 0
    loyalty = LoyaltyStore(store)
    async for partition, program_id, member_id in loyalty.member_keys():
        books = await loyalty.member_books(partition, program_id, member_id)
        if books is None:  # removed while we looked
            continue
        members += 1
        name = f"{program_id}/{member_id}"
        for what, stored, expected in (
                ("available points", books.available, books.ledger_available),
                ("pending points", books.pending, books.ledger_pending)):
            if stored != expected:
                found.append(Discrepancy(name, what, stored, expected, "loyalty member"))
    return len(account_ids) + members, found
