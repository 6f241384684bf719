"""The in-process limits' holds (tether.http.limits): each is given back once, however many
of its request's paths end it. tests/e2e/test_security.py shows the limits on the wire;
tests/cluster/test_keys_and_limits.py the same holds counted in Redis."""

from __future__ import annotations

import pytest

from tether.config import Settings
from tether.errors import TetherError
from tether.http.limits import Limiter, StreamCounter
from tether.store.keys import Caller

CLIENT = Caller("k1", "client")


def test_an_infer_released_twice_is_given_back_once() -> None:
    limiter = Limiter(Settings(auth="on", max_inflight_per_key=2))
    first = limiter.admit(CLIENT)
    limiter.admit(CLIENT)
    first()
    first()  # the relay's paths may each end it: that is still one infer
    limiter.admit(CLIENT)  # the slot `first` held
    with pytest.raises(TetherError) as refused:
        limiter.admit(CLIENT)
    assert refused.value.code == "rate_limited"


def test_a_stream_closed_twice_is_given_back_once() -> None:
    counter = StreamCounter(Settings(auth="on", max_streams_per_key=2))
    first = counter.open(CLIENT)
    counter.open(CLIENT)
    first()
    first()
    counter.open(CLIENT)
    with pytest.raises(TetherError):
        counter.open(CLIENT)


def test_nothing_is_counted_without_keys() -> None:
    limiter = Limiter(Settings(auth="off", max_inflight_per_key=1))
    releases = [limiter.admit(CLIENT) for _ in range(3)]
    for release in releases:
        release()
