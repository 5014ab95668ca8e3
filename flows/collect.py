"""``firstmile collect``: Segment's HTTP Tracking API in front of the events topic, so a
product's Segment SDKs (analytics.js, analytics-python, the mobile SDKs) send their
events straight to firstmile.

``POST /v1/track``, ``/v1/identify``, ``/v1/page``, ``/v1/screen``, ``/v1/group``,
``/v1/alias`` (one message each; the path sets its ``type``) and ``/v1/batch`` and
``/v1/import`` (``{"batch": [...]}``; the envelope's ``context`` and ``sentAt`` apply to
messages without their own). The write key comes as HTTP basic auth (the key as user,
no password) or as ``writeKey`` in the body; ``Content-Encoding: gzip`` bodies are
accepted. Every message is stamped with ``receivedAt`` (the server's clock) and keeps
the SDK's ``sentAt``: firstmile corrects device clocks with the two.

Nothing is lost silently: a request is answered ``200 {"success": true}`` only once
Kafka acknowledged every message of it (acks=all); while Kafka does not answer, ``503``
with ``Retry-After`` (the SDKs retry), and the wait for acknowledgements is the
back-pressure. Limits as Segment's: 32 KB a message, 500 KB a request.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import sys
import zlib
from datetime import UTC, datetime
from typing import Any

import orjson
from kafka import KafkaProducer
from kafka.errors import KafkaError
from prometheus_client import Counter
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from firstmile.flows.config import FirstmileConfig
from firstmile.operators.errors import ServerError

COLLECTED = Counter(
    "firstmile_collected_messages", "Messages taken by firstmile collect, by outcome", ["outcome"]
)

CALLS = ("track", "identify", "page", "screen", "group", "alias")
MAX_MESSAGE = 32 * 1024
MAX_REQUEST = 500 * 1024


def reply(status: int, code: str, message: str, **headers: str) -> Response:
    """Segment's error shape: the SDKs read ``code`` and ``message``."""
    body = {"code": code, "message": message}
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


class Collector:
    def __init__(
        self, send: Any, topic: str, write_keys: tuple[str, ...], timeout_s: float = 10.0
    ) -> None:
        self.producer, self.topic, self.timeout_s = send, topic, timeout_s
        self.write_keys = tuple(key.encode() for key in write_keys)

    def _write_key(self, request: Request, body: dict[str, Any]) -> bytes | None:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                return base64.b64decode(encoded, validate=True).partition(b":")[0]
            except (binascii.Error, ValueError):
                return None
        key = body.get("writeKey")
        return key.encode() if isinstance(key, str) else None

    async def handle(self, request: Request) -> Response:
        call = request.path_params["call"]
        if call not in (*CALLS, "batch", "import"):
            return reply(404, "not_found", f"no endpoint /v1/{call}")
        raw = await request.body()
        if "gzip" in request.headers.get("content-encoding", ""):
            try:  # bounded: a small body must not inflate without limit
                raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw, MAX_REQUEST + 1)
            except zlib.error as exc:
                return reply(400, "invalid_request", f"the gzip body cannot be read: {exc}")
        if len(raw) > MAX_REQUEST:
            return reply(400, "invalid_request", f"request over {MAX_REQUEST} bytes")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return reply(400, "invalid_request", f"the body is not JSON: {exc}")
        if not isinstance(body, dict):
            return reply(400, "invalid_request", "the body must be a JSON object")
        key = self._write_key(request, body)
        if self.write_keys and not any(hmac.compare_digest(key or b"", k) for k in self.write_keys):
            return reply(401, "unauthorized", "a valid write key is needed (basic auth user)")
        messages = self._messages(call, body)
        if isinstance(messages, Response):
            return messages
        try:
            await run_in_threadpool(self._send, messages)
        except ServerError as exc:
            COLLECTED.labels("kafka_unavailable").inc(len(messages))
            return reply(503, "unavailable", str(exc), **{"Retry-After": "1"})
        COLLECTED.labels("accepted").inc(len(messages))
        return Response(b'{"success":true}', 200, media_type="application/json")

    def _messages(self, call: str, body: dict[str, Any]) -> list[dict[str, Any]] | Response:
        received = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        shared: dict[str, Any] = {}
        if call in CALLS:
            items: list[Any] = [{**body, "type": call}]
        else:
            batch = body.get("batch")
            if not isinstance(batch, list):
                return reply(400, "invalid_request", "batch: a list of messages is needed")
            items = batch
            shared = {k: body[k] for k in ("context", "sentAt") if k in body}
        messages: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or item.get("type") not in CALLS:
                return reply(400, "invalid_request", f"batch[{i}]: a message with a type")
            message: dict[str, Any] = {**shared, **item, "receivedAt": received}
            message.pop("writeKey", None)
            if isinstance(shared.get("context"), dict) and isinstance(item.get("context"), dict):
                message["context"] = {**shared["context"], **item["context"]}
            if not (message.get("userId") or message.get("anonymousId")):
                return reply(400, "invalid_request", f"batch[{i}]: userId or anonymousId")
            messages.append(message)
        return messages

    def _send(self, messages: list[dict[str, Any]]) -> None:
        """Produce every message keyed by its user, then wait for Kafka's acks."""
        futures = []
        try:
            for message in messages:
                value = orjson.dumps(message)
                if len(value) > MAX_MESSAGE:
                    raise ServerError(f"a message over {MAX_MESSAGE} bytes")
                key = str(message.get("userId") or message.get("anonymousId")).encode()
                futures.append(self.producer.send(self.topic, value=value, key=key))
            self.producer.flush(timeout=self.timeout_s)
            for future in futures:
                future.get(timeout=0)
        except KafkaError as exc:
            raise ServerError(f"Kafka did not take the messages: {exc}") from exc


def build_app(collector: Collector) -> Starlette:
    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(
        routes=[
            Route("/v1/{call:str}", collector.handle, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def collect(config: FirstmileConfig, host: str, port: int) -> None:
    """Run the collector with uvicorn until interrupted."""
    import uvicorn

    try:
        producer = KafkaProducer(**config.kafka.client_options(), acks="all", linger_ms=5)
    except KafkaError as exc:
        servers = ",".join(config.kafka.bootstrap_servers)
        raise ServerError(f"cannot connect to Kafka at {servers}: {exc}") from exc
    keys = tuple(key.get_secret_value() for key in config.collect.write_keys)
    collector = Collector(producer, config.topics.events, keys)
    auth = f"{len(keys)} write key(s)" if keys else "no write keys: anyone may send"
    print(f"firstmile: collecting Segment events on http://{host}:{port} into "
          f"{config.topics.events} ({auth})", file=sys.stderr)  # fmt: skip
    try:
        uvicorn.run(build_app(collector), host=host, port=port, log_level="warning")
    finally:
        producer.close(timeout=10)
