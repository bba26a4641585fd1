"""Throttling of failed logins per account, on the whole stack; the sliding window itself
with a clock we move. (Per client address: tests/auth/test_key_rotation.py, on a stack of
its own with a small limit.)"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from embedviz.v1 import auth_pb2
from services.auth.throttle import Limits, LoginThrottle, LoginThrottled
from services.stack import Stack
from tests.support.world import PASSWORD, Stubs

PER_ACCOUNT = Limits().per_account  # the stack runs with the defaults


@pytest.fixture(scope="module")
async def stubs(stack: Stack) -> AsyncIterator[Stubs]:
    s = Stubs(stack)
    yield s
    await s.close()


def retry_info(err: grpc.aio.AioRpcError) -> error_details_pb2.RetryInfo | None:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info
    return None


async def test_the_failed_login_after_the_limit_is_resource_exhausted_and_says_when_to_retry(stubs: Stubs) -> None:
    who = await stubs.sign_up("throttled")
    for _ in range(PER_ACCOUNT):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.auth.Login(auth_pb2.LoginRequest(email=who.email, password="not the password"))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.auth.Login(auth_pb2.LoginRequest(email=who.email, password="not the password"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many failed logins for this account; try again in 15 minutes" == err.value.details()
    info = retry_info(err.value)
    assert info is not None and 850 <= info.retry_delay.seconds <= 900

    # While throttled even the right password is refused: guessing must not just slow down.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.auth.Login(auth_pb2.LoginRequest(email=who.email, password=PASSWORD))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    other = await stubs.sign_up("unaffected")
    assert (await stubs.auth.Login(auth_pb2.LoginRequest(email=other.email, password=PASSWORD))).user.name == other.user


async def test_an_unknown_email_is_throttled_the_same_way(stubs: Stubs) -> None:
    """Otherwise the throttle would tell which emails have accounts."""
    nobody = "nobody-throttled@example.org"
    codes = []
    for _ in range(PER_ACCOUNT + 1):
        try:
            await stubs.auth.Login(auth_pb2.LoginRequest(email=nobody, password="whatever it is"))
        except grpc.aio.AioRpcError as exc:
            codes.append(exc.code())
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * PER_ACCOUNT + [grpc.StatusCode.RESOURCE_EXHAUSTED]


def test_the_window_slides_and_a_success_clears_the_account() -> None:
    now = [1000.0]
    throttle = LoginThrottle(Limits(per_account=3, per_address=5, window_seconds=60), clock=lambda: now[0])
    for t in (0, 10, 20):
        now[0] = 1000 + t
        throttle.check("a@x.org", "10.0.0.1")
        throttle.failed("a@x.org", "10.0.0.1")
    with pytest.raises(LoginThrottled) as err:
        throttle.check("a@x.org", "10.0.0.1")
    assert err.value.retry_after == pytest.approx(40) and "try again in 40 seconds" in err.value.message
    now[0] = 1060.5  # the first failure left the window
    throttle.check("a@x.org", "10.0.0.1")
    throttle.succeeded("a@x.org")
    throttle.failed("b@x.org", "10.0.0.1")
    throttle.failed("c@x.org", "10.0.0.1")
    throttle.failed("e@x.org", "10.0.0.1")  # the address now has 5 failures in the window (10, 20, 3 now)
    with pytest.raises(LoginThrottled, match="your network address"):
        throttle.check("d@x.org", "10.0.0.1")
    throttle.check("d@x.org", "10.0.0.2")
