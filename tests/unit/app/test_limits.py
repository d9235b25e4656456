"""Token buckets, API-key admission and the list-valued settings behind them."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from app.errors import RateLimited, Unauthorized
from app.limits import ClientGuard, RateLimiter
from app.settings import Settings


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_the_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rpm=30, burst=3, clock=clock)  # one token every 2 s
    assert [limiter.check("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.check("a") == pytest.approx(2.0)
    clock.now += 1.0
    assert limiter.check("a") == pytest.approx(1.0)
    clock.now += 1.0
    assert limiter.check("a") == 0.0
    assert limiter.check("a") == pytest.approx(2.0)


def test_bucket_never_holds_more_than_the_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(rpm=60, burst=2, clock=clock)
    clock.now += 3600
    assert [limiter.check("a") > 0 for _ in range(3)] == [False, False, True]


def test_burst_defaults_to_the_rate_per_minute() -> None:
    limiter = RateLimiter(rpm=5, clock=Clock())
    assert [limiter.check("a") > 0 for _ in range(6)] == [False] * 5 + [True]


def test_clients_have_their_own_buckets() -> None:
    limiter = RateLimiter(rpm=60, burst=1, clock=Clock())
    assert limiter.check("a") == 0.0
    assert limiter.check("a") > 0
    assert limiter.check("b") == 0.0


def test_zero_rpm_means_unlimited() -> None:
    limiter = RateLimiter(rpm=0, clock=Clock())
    assert not limiter.enabled
    assert all(limiter.check("a") == 0.0 for _ in range(1000))
    assert len(limiter) == 0


def test_bucket_table_is_bounded() -> None:
    limiter = RateLimiter(rpm=60, burst=1, clock=Clock(), max_clients=100)
    for i in range(1000):
        limiter.check(f"client-{i}")
    assert len(limiter) == 100
    assert limiter.check("client-999") > 0  # recent clients are kept


def test_guard_with_keys_needs_a_valid_bearer_key() -> None:
    guard = ClientGuard(["k1", "k2"], RateLimiter(rpm=0))
    assert guard.requires_key
    guard.admit("Bearer k2", None)
    guard.admit("bearer k1", None)
    for header in (None, "", "Bearer", "Bearer ", "Basic k1", "Bearer k3", "Bearer k1x"):
        with pytest.raises(Unauthorized):
            guard.admit(header, "10.0.0.1")


def test_guard_limits_per_key_when_keys_are_set() -> None:
    guard = ClientGuard(["k1", "k2"], RateLimiter(rpm=60, burst=1, clock=Clock()))
    guard.admit("Bearer k1", "10.0.0.1")
    with pytest.raises(RateLimited) as info:
        guard.admit("Bearer k1", "10.0.0.2")  # another address, same key
    assert info.value.retry_after_s == 1 and info.value.status_code == 429
    guard.admit("Bearer k2", "10.0.0.1")


def test_guard_limits_per_address_without_keys() -> None:
    guard = ClientGuard([], RateLimiter(rpm=60, burst=1, clock=Clock()))
    assert not guard.requires_key
    guard.admit(None, "10.0.0.1")
    guard.admit("Bearer anything", "10.0.0.2")
    with pytest.raises(RateLimited):
        guard.admit(None, "10.0.0.1")


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    guard = ClientGuard([], RateLimiter(rpm=7, burst=1, clock=Clock()))  # 8.57 s a token
    guard.admit(None, "a")
    with pytest.raises(RateLimited) as info:
        guard.admit(None, "a")
    assert info.value.retry_after_s == 9


# --- settings --------------------------------------------------------------------------------


def test_api_keys_from_env_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_API_KEYS", " k1 , k2,, ")
    keys = Settings().api_keys
    assert [k.get_secret_value() for k in keys] == ["k1", "k2"]
    assert "k1" not in repr(Settings())


def test_api_keys_and_origins_from_env_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_API_KEYS", json.dumps(["a,b", "c"]))
    monkeypatch.setenv("LETHE_CORS_ORIGINS", '["https://a.example", "https://b.example"]')
    settings = Settings()
    assert [k.get_secret_value() for k in settings.api_keys] == ["a,b", "c"]
    assert settings.cors_origins == ["https://a.example", "https://b.example"]


def test_empty_lists_turn_the_features_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_API_KEYS", "")
    monkeypatch.setenv("LETHE_CORS_ORIGINS", "")
    settings = Settings()
    assert settings.api_keys == [] and settings.cors_origins == []
    assert not ClientGuard.from_settings(settings).requires_key


def test_hardening_defaults() -> None:
    settings = Settings()
    assert settings.rate_limit_rpm == 0 and settings.rate_limit_burst is None
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.log_format == "json"
    assert settings.metrics_token is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LETHE_API_KEYS", "[not json"),
        ("LETHE_RATE_LIMIT_RPM", "-1"),
        ("LETHE_RATE_LIMIT_BURST", "0"),
        ("LETHE_MAX_BODY_BYTES", "0"),
        ("LETHE_LOG_FORMAT", "xml"),
    ],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()
