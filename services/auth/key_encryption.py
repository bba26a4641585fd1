"""Signing keys encrypted at rest: the private half of every signing key is sealed with
AES-256-GCM under a key-encryption key that lives outside the database
(EMBEDVIZ_KEY_ENCRYPTION_KEY, or EMBEDVIZ_KEY_ENCRYPTION_KEY_FILE for a mounted secret),
so read access to the database is not enough to mint a token. Each ciphertext is bound to
its key id (associated data), so a row copied under another kid does not open.

Stored form: `aesgcm1.<fingerprint of the key-encryption key>.<base64url(nonce || ciphertext)>`.
The fingerprint only tells which key-encryption key sealed a row, for a clear error when the
wrong one is given and for re-sealing under a new one (EMBEDVIZ_OLD_KEY_ENCRYPTION_KEY)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ENV = "EMBEDVIZ_KEY_ENCRYPTION_KEY"
ENV_FILE = "EMBEDVIZ_KEY_ENCRYPTION_KEY_FILE"
OLD_ENV = "EMBEDVIZ_OLD_KEY_ENCRYPTION_KEY"
OLD_ENV_FILE = "EMBEDVIZ_OLD_KEY_ENCRYPTION_KEY_FILE"
PREFIX = "aesgcm1"
KEY_BYTES = 32
NONCE_BYTES = 12
MAKE_ONE = "python -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'"


class KeyEncryptionError(RuntimeError):
    """The key-encryption key is missing or wrong, or a sealed key does not open; the
    message says which and what to do. Auth does not start with it."""


def new_key_text() -> str:
    """A fresh key-encryption key in the form the settings take (base64 of 32 bytes)."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def is_plaintext(stored: str) -> bool:
    """A private key from before encryption at rest (a PKCS#8 PEM)."""
    return stored.lstrip().startswith("-----BEGIN")


def _fingerprint(key: bytes) -> str:
    return hashlib.sha256(b"embedviz key-encryption key\0" + key).hexdigest()[:16]


def _associated_data(kid: str) -> bytes:
    return f"embedviz auth signing key {kid}".encode()


def _decode(text: str, name: str) -> bytes:
    cleaned = "".join(text.split()).translate(str.maketrans("-_", "+/"))  # standard or URL-safe base64
    try:
        key = base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyEncryptionError(
            f"{name} must be {KEY_BYTES} random bytes in base64 (44 characters), e.g. from `{MAKE_ONE}`; "
            f"the value given is not (it decodes to {len(key) if key else 'no'} bytes)"
        )
    return key


def _read(environ: Mapping[str, str], name: str, file_name: str) -> tuple[bytes, str] | None:
    """The key from `name` or from the file `file_name` names, with where it came from."""
    value = environ.get(name, "").strip()
    path = environ.get(file_name, "").strip()
    if value and path:
        raise KeyEncryptionError(f"set {name} or {file_name}, not both")
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise KeyEncryptionError(f"{file_name} names {path}, which cannot be read: {exc.strerror or exc}") from exc
        return _decode(text, f"{file_name} ({path})"), file_name
    if value:
        return _decode(value, name), name
    return None


class KeyEncryption:
    """Seals and opens private signing keys. `current` seals; rows sealed under `previous`
    (a key-encryption key being replaced) still open, and auth re-seals them at start."""

    def __init__(self, current: bytes, previous: bytes | None = None, source: str = ENV) -> None:
        self._current = AESGCM(current)
        self.fingerprint = _fingerprint(current)
        self.source = source
        self._open_with = {self.fingerprint: self._current}
        if previous is not None:
            self._open_with.setdefault(_fingerprint(previous), AESGCM(previous))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KeyEncryption:
        """From EMBEDVIZ_KEY_ENCRYPTION_KEY or _FILE (required) and the _OLD_ pair (optional)."""
        environ = os.environ if environ is None else environ
        current = _read(environ, ENV, ENV_FILE)
        if current is None:
            raise KeyEncryptionError(
                f"{ENV} is not set: the auth service keeps its signing keys encrypted with it. Set it to "
                f"{KEY_BYTES} random bytes in base64 (`{MAKE_ONE}`), or {ENV_FILE} to a file that holds them "
                "(a mounted secret); `make run` makes one in its data folder. Keep it: without the same key "
                "auth cannot read the signing keys it made"
            )
        previous = _read(environ, OLD_ENV, OLD_ENV_FILE)
        return cls(current[0], previous[0] if previous else None, source=current[1])

    def seal(self, kid: str, private_pem: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._current.encrypt(nonce, private_pem.encode(), _associated_data(kid))
        return f"{PREFIX}.{self.fingerprint}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def is_current(self, stored: str) -> bool:
        """Sealed under the current key-encryption key (nothing to re-seal)."""
        return stored.startswith(f"{PREFIX}.{self.fingerprint}.")

    def open(self, kid: str, stored: str) -> str:
        """The PEM of the signing key `kid` from its stored form; a clear error if it does not open."""
        parts = stored.split(".", 2)
        if len(parts) != 3 or parts[0] != PREFIX:
            raise KeyEncryptionError(f"the signing key {kid} in auth.signing_keys is in no form auth knows")
        fingerprint, body = parts[1], parts[2]
        aead = self._open_with.get(fingerprint)
        if aead is None:
            raise KeyEncryptionError(
                f"the signing key {kid} in auth.signing_keys was encrypted with another key-encryption key "
                f"(fingerprint {fingerprint}) than the one in {self.source} (fingerprint {self.fingerprint}). "
                f"Give auth the key it was made with; to change keys, set the new one in {ENV} and the old one "
                f"in {OLD_ENV} for one start. If the old key is lost, delete the rows of auth.signing_keys: "
                "auth makes a new key, and everyone signs in again"
            )
        try:
            raw = base64.urlsafe_b64decode(body.encode())
            return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _associated_data(kid)).decode()
        except (InvalidTag, ValueError, binascii.Error) as exc:
            raise KeyEncryptionError(
                f"the signing key {kid} in auth.signing_keys does not decrypt with the key-encryption key in "
                f"{self.source}, although that key sealed it: the row was altered or copied from another kid. "
                "Delete that row (tokens it signed stop working) or restore it from a backup"
            ) from exc
