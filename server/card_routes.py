"""Which account a card draws on, remembered per worker.

The account's partition decides which keys the authorization reads, so it must
be known before the read pipeline is built. A card never changes account in
normal operation, so each worker remembers card -> account after the first
lookup and authorizes in two round trips from then on. The memory is only a
hint: the read pipeline re-reads the card (and the PAN index) and the pipeline
starts over with a fresh lookup when they no longer agree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CardRoute:
    """Where an authorization for a card goes."""

    card_token: str
    account_id: str


class CardRoutes:
    """A bounded map from card reference (token or PAN hash) to CardRoute.

    When full it forgets the oldest entries (insertion order): a forgotten card
    costs one extra round trip on its next authorization, nothing more.
    """

    __slots__ = ("_routes", "_capacity")

    def __init__(self, capacity: int = 1_000_000) -> None:
        self._routes: dict[str, CardRoute] = {}
        self._capacity = capacity

    def get(self, reference: str) -> CardRoute | None:
        """The remembered route of a card reference, or None."""
        return self._routes.get(reference)

    def remember(self, reference: str, route: CardRoute) -> None:
        """Remember a route, forgetting the oldest tenth when full."""
        if len(self._routes) >= self._capacity and reference not in self._routes:
            for old in list(self._routes)[: max(1, self._capacity // 10)]:
                del self._routes[old]
        self._routes[reference] = route

    def forget(self, reference: str) -> None:
        """Drop a route that turned out stale."""
        self._routes.pop(reference, None)
