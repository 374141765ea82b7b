"""`payauth serve` settings: flags, their PAYAUTH_* defaults, and clear refusals."""

from __future__ import annotations

import pytest

from payauth.server.cli import main
from payauth.server.config import add_serve_arguments, settings_from_args


def _settings(argv: list[str]):
    import argparse

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return settings_from_args(parser.parse_args(argv))


def test_environment_gives_the_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PAYAUTH_PORT", "6001")
    monkeypatch.setenv("PAYAUTH_WORKERS", "3")
    monkeypatch.setenv("PAYAUTH_REDIS_URL", "redis://127.0.0.1:7000/0")
    monkeypatch.setenv("PAYAUTH_REDIS_CLUSTER", "yes")
    monkeypatch.setenv("PAYAUTH_DATA_DIR", str(tmp_path))
    settings = _settings([])
    assert (settings.port, settings.workers, settings.redis_url, settings.redis_cluster,
            settings.data_dir) == (6001, 3, "redis://127.0.0.1:7000/0", True, tmp_path)
    assert not settings.embedded_redis
    # A flag wins over its variable.
    assert _settings(["--port", "6002"]).port == 6002


def test_embedded_redis_by_default(tmp_path) -> None:
    settings = _settings(["--data-dir", str(tmp_path)])
    assert settings.embedded_redis
    assert settings.pan_key_path == tmp_path / "pan.key"


@pytest.mark.parametrize(("argv", "message"), [
    (["--host", "0.0.0.0"], "loopback"),
    (["--workers", "0"], "--workers"),
    (["--redis-cluster"], "--redis-cluster needs --redis-url"),
    (["--idempotency-ttl", "60"], "--idempotency-ttl must be at least --clock-skew-past"),
    (["--hold-ttl", "0"], "--hold-ttl must be positive"),
])
def test_refusals_name_the_flag(argv: list[str], message: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
