"""Where the command line keeps its session: `$XDG_CONFIG_HOME/embedviz/credentials.json`
(or `~/.config/embedviz/...`), readable by the user alone (file 600, folder 700).

The file holds the access token, and either the refresh token of a password login or the
API key of a key login, so that a later command can get a new access token on its own.
Refresh tokens rotate on every use: a refresh is done under a file lock and saved at once,
so two commands running side by side never spend the same refresh token twice (which the
auth service would take for theft and end the session)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

FILE_NAME = "credentials.json"


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "embedviz"


@dataclass
class Credentials:
    """A signed-in session. `access_expires` and `refresh_expires` are Unix seconds."""

    url: str = ""
    email: str = ""
    user: str = ""
    access_token: str = ""
    access_expires: float = 0.0
    refresh_token: str = ""
    refresh_expires: float = 0.0
    api_key: str = ""

    def renewable(self) -> bool:
        return bool(self.refresh_token or self.api_key)


class CredentialStore:
    """The credentials file of one config folder."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder if folder is not None else config_dir()
        self.path = self.folder / FILE_NAME

    def load(self) -> Credentials | None:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise CredentialsError(f"cannot read {self.path}: {error}; run `embedviz login` again") from error
        if not isinstance(raw, dict):
            raise CredentialsError(f"{self.path} is not a credentials file; run `embedviz login` again")
        known = {name for name in Credentials.__dataclass_fields__}
        return Credentials(**{key: value for key, value in raw.items() if key in known})

    def save(self, credentials: Credentials) -> None:
        self._make_folder()
        # Written to a private temporary file and renamed over the old one: never readable
        # by others, never half-written.
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=".credentials-", suffix=".json")
        try:
            os.fchmod(handle, 0o600)
            with os.fdopen(handle, "w") as out:
                json.dump(asdict(credentials), out, indent=2)
                out.write("\n")
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    def delete(self) -> bool:
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Holds the folder's lock file: one refresh at a time across processes."""
        self._make_folder()
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _make_folder(self) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder.chmod(0o700)


class CredentialsError(Exception):
    """The credentials file cannot be used."""
