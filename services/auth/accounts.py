"""Users, sessions and API keys: the auth domain, no gRPC here."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.auth.keys import KeyRing, delegated_token_ttl
from services.auth.models import ApiKey, Session, User
from services.auth.throttle import Limits, LoginThrottle
from services.common import paging, revocations
from services.common.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated, Unavailable, excerpt
from services.common.jobs import utcnow

log = logging.getLogger(__name__)

# (kind, id): announce that a session family or an API key is revoked.
Revoke = Callable[[str, str], Awaitable[None]]

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
API_KEY_PREFIX = "evk_"
WRONG_LOGIN = "email or password is wrong"

# Argon2id, memory-hard: 64 MiB, 3 passes.
_hasher = PasswordHasher(time_cost=3, memory_cost=64 * 1024, parallelism=1)
# Verified when the email is unknown, so both failures take the same time.
_DUMMY_HASH = _hasher.hash("embedviz-no-such-user-password")


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def normalise_email(email: str) -> str:
    value = (email or "").strip().lower()
    if not EMAIL.match(value) or len(value) > 320:
        raise InvalidArgument(f"'{excerpt(email)}' is not an email address")
    return value


# Passwords people pick first; a long one that is on this list is still guessed at once.
COMMON_PASSWORDS = frozenset(
    {
        "password", "password1", "password12", "password123", "password1234", "1234567890",
        "12345678910", "123456789a", "qwertyuiop", "qwerty1234", "qwerty12345", "1q2w3e4r5t",
        "iloveyou12", "letmein123", "welcome123", "admin12345", "abcdefghij", "0987654321",
        "passw0rd12", "changeme12", "embedviz12", "embedviz123", "trustno1234", "football12",
        "baseball12", "sunshine12", "princess12", "dragon1234", "monkey1234", "1111111111",
    }
)


def check_password(password: str, email: str = "") -> None:
    """Length first (the thing that matters most), then the obvious guesses."""
    if len(password) < MIN_PASSWORD:
        raise InvalidArgument(
            f"the password is too short ({len(password)} characters): use at least {MIN_PASSWORD}; "
            "a few unrelated words make a long password that is easy to remember"
        )
    if len(password) > MAX_PASSWORD:
        raise InvalidArgument(f"the password is too long: use at most {MAX_PASSWORD} characters")
    if len(set(password)) < 5:
        raise InvalidArgument(
            "the password repeats too few different characters: use at least 5 different ones"
        )
    lowered = password.lower()
    if lowered in COMMON_PASSWORDS:
        raise InvalidArgument("the password is one of the most common passwords: pick another")
    local = email.split("@", 1)[0].lower()
    if email and (lowered == email.lower() or (len(local) >= 4 and local in lowered)):
        raise InvalidArgument("the password contains your email address: pick one that does not")


@dataclass(frozen=True)
class Tokens:
    access_token: str
    access_expire: datetime
    refresh_token: str
    refresh_expire: datetime


@dataclass(frozen=True)
class AccessToken:
    token: str
    expire: datetime


class Accounts:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        keys: KeyRing,
        issuer: str,
        audience: str,
        internal_audience: str,
        access_ttl: int,
        refresh_ttl: int,
        throttle: LoginThrottle | None = None,
        delegated_ttl: int | None = None,
        revoke: Revoke | None = None,
    ) -> None:
        self.throttle = throttle or LoginThrottle(Limits())
        # Tells every service that a session or API key is revoked (services/common/revocations.py).
        self._revoke = revoke
        # Read (and checked) when auth starts: a bad EMBEDVIZ_DELEGATED_TOKEN_TTL stops the start.
        self._delegated_ttl = delegated_ttl if delegated_ttl is not None else delegated_token_ttl()
        self._sessions = sessions
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._internal_audience = internal_audience
        self._access_ttl = access_ttl
        self._refresh_ttl = refresh_ttl

    async def _announce(self, kind: str, ident: str) -> None:
        """After the database says revoked: tell the services, so its access tokens stop
        now, not when they expire. If that fails the caller gets UNAVAILABLE and may simply
        ask again (the revocation in the database stays)."""
        if self._revoke is None:
            return
        try:
            await self._revoke(kind, ident)
        except Exception as exc:
            log.warning("could not announce the revocation of %s %s: %s", kind, ident, exc)
            raise Unavailable("the revocation is saved but could not reach every service yet; try again") from None

    async def _access_token(
        self, user: User, audience: str, ttl: int, session_id: str = "", api_key_id: str = ""
    ) -> AccessToken:
        now = utcnow()
        expire = now + timedelta(seconds=ttl)
        claims: dict[str, object] = {
            "iss": self._issuer,
            "aud": audience,
            "sub": str(user.id),
            "email": user.email,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int(expire.timestamp()),
        }
        if session_id:
            claims["sid"] = session_id
        if api_key_id:
            claims["akey"] = api_key_id
        return AccessToken(await self._keys.sign(claims), expire)

    async def _start_session(self, session: AsyncSession, user: User, family: uuid.UUID | None = None) -> Tokens:
        refresh = secrets.token_urlsafe(32)
        family = family or uuid.uuid4()
        expire = utcnow() + timedelta(seconds=self._refresh_ttl)
        session.add(Session(family=family, user_id=user.id, token_hash=_sha256(refresh), expire_time=expire))
        access = await self._access_token(user, self._audience, self._access_ttl, str(family))
        return Tokens(access.token, access.expire, refresh, expire)

    async def sign_up(self, email: str, password: str, display_name: str) -> tuple[User, Tokens]:
        email = normalise_email(email)
        check_password(password, email)
        name = (display_name or "").strip() or email.split("@", 1)[0]
        if len(name) > 200:
            raise InvalidArgument("the display name is too long: use at most 200 characters")
        password_hash = await asyncio.to_thread(_hasher.hash, password)
        async with self._sessions() as session:
            user = User(email=email, display_name=name, password_hash=password_hash)
            session.add(user)
            try:
                await session.flush()
            except IntegrityError:
                raise AlreadyExists(f"an account for {email} exists already; log in instead") from None
            tokens = await self._start_session(session, user)
            await session.commit()
        return user, tokens

    async def login(self, email: str, password: str, address: str = "") -> tuple[User, Tokens]:
        """Unknown email and wrong password read the same and take the same time (the
        dummy hash); both count as a failure for the account and the client address."""
        email = (email or "").strip().lower()
        self.throttle.check(email, address)
        async with self._sessions() as session:
            user = await session.scalar(select(User).where(User.email == email))
            stored = user.password_hash if user is not None else _DUMMY_HASH
            try:
                await asyncio.to_thread(_hasher.verify, stored, password or "")
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                self.throttle.failed(email, address)
                raise Unauthenticated(WRONG_LOGIN) from None
            if user is None:
                self.throttle.failed(email, address)
                raise Unauthenticated(WRONG_LOGIN)
            self.throttle.succeeded(email)
            tokens = await self._start_session(session, user)
            await session.commit()
        return user, tokens

    async def find_by_email(self, email: str) -> User:
        address = normalise_email(email)
        async with self._sessions() as session:
            user = await session.scalar(select(User).where(User.email == address))
        if user is None:
            raise NotFound(f"no embedviz account uses {address}; ask them to sign up first, then add them")
        return user

    async def refresh(self, refresh_token: str) -> Tokens:
        """Rotate: the presented token is used up and a new one of the same family comes
        back. A used token presented again means it leaked: the whole family is revoked."""
        if not refresh_token:
            raise InvalidArgument("refresh_token is required")
        async with self._sessions() as session:
            row = await session.scalar(
                select(Session).where(Session.token_hash == _sha256(refresh_token)).with_for_update()
            )
            if row is None or row.revoked or row.expire_time <= utcnow():
                raise Unauthenticated("the session has ended; log in again")
            if row.used:
                await session.execute(update(Session).where(Session.family == row.family).values(revoked=True))
                await session.commit()
                with contextlib.suppress(Unavailable):  # the refusal below matters more
                    await self._announce(revocations.SESSION, str(row.family))
                raise Unauthenticated("this refresh token was already used; the session is revoked, log in again")
            row.used = True
            user = await session.get(User, row.user_id)
            if user is None:
                raise Unauthenticated("the session has ended; log in again")
            tokens = await self._start_session(session, user, row.family)
            await session.commit()
        return tokens

    async def logout(self, user_id: str, refresh_token: str) -> None:
        async with self._sessions() as session:
            row = await session.scalar(select(Session).where(Session.token_hash == _sha256(refresh_token or "")))
            if row is None or str(row.user_id) != user_id:
                raise NotFound("no such session")
            await session.execute(update(Session).where(Session.family == row.family).values(revoked=True))
            await session.commit()
        await self._announce(revocations.SESSION, str(row.family))

    async def get_user(self, user_id: str) -> User:
        async with self._sessions() as session:
            user = await session.get(User, _uuid(user_id, "user"))
        if user is None:
            raise NotFound(f"users/{user_id} not found")
        return user

    async def create_api_key(self, user_id: str, display_name: str) -> tuple[ApiKey, str]:
        name = (display_name or "").strip()
        if not name or len(name) > 200:
            raise InvalidArgument("api_key.display_name is required (at most 200 characters)")
        secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(user_id=_uuid(user_id, "user"), display_name=name, prefix=secret[:10], secret_hash=_sha256(secret))
        async with self._sessions() as session:
            session.add(key)
            await session.commit()
        return key, secret

    async def list_api_keys(self, user_id: str, page_size: int, page_token: str) -> tuple[list[ApiKey], str]:
        size = paging.page_size(page_size, 50, 1000)
        offset = _offset(page_token)
        async with self._sessions() as session:
            rows = (
                await session.scalars(
                    select(ApiKey)
                    .where(ApiKey.user_id == _uuid(user_id, "user"))
                    .order_by(ApiKey.create_time, ApiKey.id)
                    .offset(offset)
                    .limit(size + 1)
                )
            ).all()
        next_token = paging.encode({"o": offset + size}) if len(rows) > size else ""
        return list(rows[:size]), next_token

    async def delete_api_key(self, user_id: str, key_id: str) -> None:
        async with self._sessions() as session:
            key = await session.get(ApiKey, _uuid(key_id, "API key"))
            if key is None or str(key.user_id) != user_id:
                raise NotFound(f"users/{user_id}/apiKeys/{key_id} not found")
            await session.delete(key)
            await session.commit()
        await self._announce(revocations.API_KEY, str(key.id))

    async def exchange_api_key(self, secret: str) -> AccessToken:
        async with self._sessions() as session:
            key = await session.scalar(select(ApiKey).where(ApiKey.secret_hash == _sha256(secret or "")))
            if key is None:
                raise Unauthenticated("the API key is not valid (revoked or mistyped)")
            key.last_used_time = utcnow()
            user = await session.get(User, key.user_id)
            await session.commit()
        assert user is not None
        return await self._access_token(user, self._audience, self._access_ttl, api_key_id=str(key.id))

    async def delegated_token(self, user_id: str, ttl: int) -> AccessToken:
        """A token for a job's owner: the user's account is all it needs, not a session of
        theirs (a job outlives the session that started it). `ttl` 0: the set lifetime;
        a longer one is cut to it."""
        user = await self.get_user(user_id)
        lifetime = self._delegated_ttl if ttl <= 0 else max(min(ttl, self._delegated_ttl), min(60, self._delegated_ttl))
        return await self._access_token(user, self._internal_audience, lifetime)


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"{what} '{excerpt(value)}' not found") from None


def _offset(token: str) -> int:
    value = paging.decode(token)
    if value is None:
        return 0
    if not isinstance(value, dict) or not isinstance(value.get("o"), int) or value["o"] < 0:
        raise InvalidArgument("page_token is not a token this service gave out; start again without it")
    return int(value["o"])
