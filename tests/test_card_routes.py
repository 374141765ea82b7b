"""The worker's card route memory: bounded, and out of the garbage collector's way."""

from __future__ import annotations

import gc

from payauth.server.card_routes import CardRoute, CardRoutes


def test_routes_are_remembered_and_the_oldest_tenth_forgotten_when_full() -> None:
    routes = CardRoutes(capacity=20)
    for i in range(20):
        routes.remember(f"tok:{i}", CardRoute(f"card-{i}", f"acct-{i}"))
    assert routes.get("tok:7") == CardRoute("card-7", "acct-7")
    assert routes.get("tok:7").account_id == "acct-7"
    routes.remember("tok:new", CardRoute("card-new", "acct-new"))
    assert routes.get("tok:0") is None and routes.get("tok:1") is None  # the oldest tenth
    assert routes.get("tok:2") == CardRoute("card-2", "acct-2")
    assert routes.get("tok:new") == CardRoute("card-new", "acct-new")
    routes.forget("tok:new")
    assert routes.get("tok:new") is None


def test_remembered_routes_leave_the_collectors_sight() -> None:
    """A full map lives as long as the worker; a full collection must not walk it."""
    routes = CardRoutes()
    gc.collect()
    before = len(gc.get_objects())
    for i in range(20_000):
        routes.remember(f"pan:{i:064d}", CardRoute(f"ct_{i:024d}", f"acct-{i:08d}"))
    gc.collect()
    assert len(gc.get_objects()) - before < 100
    assert routes.get("pan:" + "0" * 60 + "1234") == CardRoute(f"ct_{1234:024d}", "acct-00001234")
