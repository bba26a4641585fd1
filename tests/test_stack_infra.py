"""The embedded servers the stack starts are real and usable: PostgreSQL 18 and JetStream."""

from __future__ import annotations

import asyncpg
import nats
from nats.js.api import ConsumerConfig, DeliverPolicy, StreamConfig

from services.stack import Stack


async def test_postgres_answers_as_postgresql_18(infra: Stack) -> None:
    conn = await asyncpg.connect(infra.pg_dsn)
    try:
        version = await conn.fetchval("select version()")
        database = await conn.fetchval("select current_database()")
    finally:
        await conn.close()
    assert version.startswith("PostgreSQL 18")
    assert database == "embedviz"


async def test_postgres_listens_on_loopback_only(infra: Stack) -> None:
    conn = await asyncpg.connect(infra.pg_dsn)
    try:
        listen = await conn.fetchval("show listen_addresses")
    finally:
        await conn.close()
    assert listen in ("127.0.0.1", "localhost")


async def test_jetstream_keeps_only_the_last_message_per_subject(infra: Stack) -> None:
    nc = await nats.connect(infra.nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(name="TEST_LAST_VALUE", subjects=["test.last.>"], max_msgs_per_subject=1)
        )
        await js.publish("test.last.job1", b"running 10%")
        await js.publish("test.last.job1", b"running 90%")

        sub = await js.subscribe(
            "test.last.job1",
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            ordered_consumer=True,
        )
        first = await sub.next_msg(timeout=5)
        assert first.data == b"running 90%"
        info = await js.stream_info("TEST_LAST_VALUE")
        assert info.state.messages == 1
        await sub.unsubscribe()
        await js.delete_stream("TEST_LAST_VALUE")
    finally:
        await nc.close()
