"""Who may do what on NATS: one user per service, allowed to publish only its own events,
its own work and the JetStream API calls of its own consumers, so no service can pass for
another (a forged `events.embedding.*` would start a map as anyone; a forged `work.*`
would run a job as anyone).

- Events and work: only ingest publishes `events.dataset.>`, `events.dataset-deleted.>` and
  `work.dataset`; only embedding `events.embedding.>`, `events.embedding-deleted.>` and
  `work.embedding`; only projection `events.projection.>` and `work.projection`; only auth
  `revocations.>`. Every other subject is refused (a permissions violation).
- Streams: only auth may create or change them (it starts first, and its signing keys let it
  act as anyone anyway): a stream's settings can republish its messages to any subject,
  which would bypass the table. The others may only read a stream's info.
- Consumers: a service creates, reads from and acks only its own durable consumers (by
  name), plus ephemeral ordered consumers for Watch RPCs and revocations; replies come to
  its own inbox prefix `_INBOX.<user>`, the only subjects it may subscribe to.
- `admin` may do everything: the stack's readiness check, the tests, an operator's tools.

A service that publishes a new subject or uses a new durable consumer needs a line here
(tests/test_nats_auth.py finds any refusal of a service's connection in nats-server's log).
The stack writes nats-server's config from this table (`server_config`); deploy/nats/nats.conf
holds the same block with passwords from the environment (a test keeps them equal); an
operator of another nats-server prints it with `python -m services.common.nats_access`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from services.common.events import EVENTS_STREAM, WORK_STREAM, inbox_prefix
from services.common.revocations import STREAM as REVOCATIONS_STREAM

STREAMS = (EVENTS_STREAM, WORK_STREAM, REVOCATIONS_STREAM)
ADMIN = "admin"


@dataclass(frozen=True)
class Durable:
    """A durable consumer a service owns: `name` on `stream`."""

    stream: str
    name: str


@dataclass(frozen=True)
class ServiceAccess:
    publishes: tuple[str, ...]
    durables: tuple[Durable, ...] = ()
    follows: tuple[str, ...] = ()  # streams it reads through ephemeral ordered consumers
    purges: tuple[str, ...] = ()  # streams whose messages it deletes (a removed job's events)
    manages_streams: bool = False


ACCESS: dict[str, ServiceAccess] = {
    "auth": ServiceAccess(
        publishes=("revocations.>",),
        follows=(REVOCATIONS_STREAM,),
        manages_streams=True,
    ),
    "ingest": ServiceAccess(
        publishes=("events.dataset.>", "events.dataset-deleted.>", "work.dataset"),
        durables=(Durable(WORK_STREAM, "dataset-workers"),),
        follows=(EVENTS_STREAM, REVOCATIONS_STREAM),
        purges=(EVENTS_STREAM,),
    ),
    "embedding": ServiceAccess(
        publishes=("events.embedding.>", "events.embedding-deleted.>", "work.embedding"),
        durables=(Durable(WORK_STREAM, "embedding-workers"), Durable(EVENTS_STREAM, "embedding-dataset-deleted")),
        follows=(EVENTS_STREAM, REVOCATIONS_STREAM),
        purges=(EVENTS_STREAM,),
    ),
    "projection": ServiceAccess(
        publishes=("events.projection.>", "work.projection"),
        durables=(
            Durable(WORK_STREAM, "projection-workers"),
            Durable(EVENTS_STREAM, "projection-follow-ups"),
            Durable(EVENTS_STREAM, "projection-embedding-deleted"),
        ),
        follows=(EVENTS_STREAM, REVOCATIONS_STREAM),
        purges=(EVENTS_STREAM,),
    ),
}
USERS = (*ACCESS, ADMIN)


def publish_allowed(user: str) -> list[str]:
    """The subjects `user` may publish to (the JetStream API is requests on subjects too)."""
    access = ACCESS[user]
    api = "$JS.API"
    allowed = [*access.publishes, f"{api}.INFO"]
    streams = STREAMS if access.manages_streams else tuple(
        dict.fromkeys([*access.follows, *access.purges, *(d.stream for d in access.durables)])
    )
    allowed += [f"{api}.STREAM.INFO.{s}" for s in streams]
    if access.manages_streams:
        allowed += [f"{api}.STREAM.{verb}.{s}" for s in STREAMS for verb in ("CREATE", "UPDATE")]
    allowed += [f"{api}.STREAM.PURGE.{s}" for s in access.purges]
    for stream in access.follows:
        # an ephemeral consumer (its create subject names no consumer) and its flow control
        allowed += [f"{api}.CONSUMER.CREATE.{stream}", f"$JS.FC.{stream}.>"]
    for d in access.durables:
        allowed += [
            f"{api}.CONSUMER.INFO.{d.stream}.{d.name}",
            f"{api}.CONSUMER.CREATE.{d.stream}.{d.name}",
            f"{api}.CONSUMER.CREATE.{d.stream}.{d.name}.>",  # the form with its filter subject
            f"{api}.CONSUMER.DURABLE.CREATE.{d.stream}.{d.name}",
            f"{api}.CONSUMER.MSG.NEXT.{d.stream}.{d.name}",
            f"$JS.ACK.{d.stream}.{d.name}.>",
        ]
    return allowed


def subscribe_allowed(user: str) -> list[str]:
    return [f"{inbox_prefix(user)}.>"]


def _quote(subject: str) -> str:
    return '"' + subject.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _list(items: list[str], indent: str) -> str:
    return "[\n" + "".join(f"{indent}  {_quote(i)}\n" for i in items) + f"{indent}]"


def authorization(password: Callable[[str], str]) -> str:
    """nats-server's `authorization` block for every user; `password(user)` gives what
    follows `password:` (a quoted string, or a `$VARIABLE` nats-server takes from its
    environment)."""
    lines = ["authorization {", "  users = ["]
    for user in USERS:
        if user == ADMIN:
            lines.append(f"    {{ user: {ADMIN}, password: {password(ADMIN)} }}")
            continue
        lines += [
            f"    {{ user: {user}, password: {password(user)}, permissions: {{",
            f"      publish: {{ allow: {_list(publish_allowed(user), '      ')} }}",
            f"      subscribe: {{ allow: {_list(subscribe_allowed(user), '      ')} }}",
            "    } }",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def password_variable(user: str) -> str:
    """The environment variable that holds `user`'s password where nats-server reads it
    from there (docker-compose.yaml)."""
    return f"EMBEDVIZ_NATS_PASSWORD_{user.upper()}"


def server_config(passwords: Mapping[str, str]) -> str:
    """A nats-server config with the users and their permissions; the stack gives listen
    address and JetStream folder on the command line."""
    return (
        "# written by the embedviz stack (services/common/nats_access.py) at every start\n"
        + authorization(lambda user: _quote(passwords[user]))
    )


def main() -> None:
    print("# the users and permissions embedviz needs; passwords from nats-server's environment")
    sys.stdout.write(authorization(lambda user: f"${password_variable(user)}"))


if __name__ == "__main__":
    main()
