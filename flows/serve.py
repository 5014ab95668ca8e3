"""``firstmile serve``: the decision API the product's app asks "what should this user see
now?", read from the Redis profile store the job keeps.

Routes (JSON; errors are RFC 9457 problem documents, ``application/problem+json``):

- ``GET /v1/users/{id}/decision``: segment and its label, churn band, onboarding path,
  experiment arms, last triggers, ``seq`` and model versions. An ETag (the profile's
  ``seq``) answers ``If-None-Match`` with 304; ``Cache-Control: private, max-age=1`` (the
  job updates a busy user at most once a second). A user the store does not know gets
  the default decision: the default path, and the experiment arms the job will give
  them at signup (the same GrowthBook hashing of the same id), ``"known": false``.
- ``GET /v1/users/{id}/profile``: the whole stored profile (404 if unknown).
- ``GET /healthz`` (the process answers), ``GET /readyz`` (Redis answers),
  ``GET /metrics`` (Prometheus: requests by route and status, latency).

With ``[serve] api_keys`` set, every ``/v1`` request needs ``Authorization: Bearer <key>``;
CORS for browser apps from ``[serve] cors_origins``.

Why Starlette on uvicorn: a small, well-kept ASGI toolkit (routing, middleware, CORS) on
the usual production server, without a framework's validation layer that routes of one
path parameter do not need.
"""

from __future__ import annotations

import hmac
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import Counter, Histogram, make_asgi_app
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from firstmile.flows.config import FirstmileConfig
from firstmile.operators.errors import ServerError
from firstmile.operators.experiments import Experiments
from firstmile.operators.paths import PathMap
from firstmile.state.profile_store import ProfileStore, RedisProfileStore

REQUESTS = Counter(
    "firstmile_api_requests", "Decision API requests by route and status", ["route", "status"]
)
LATENCY = Histogram(
    "firstmile_api_latency_seconds",
    "Decision API latency by route",
    ["route"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)

#: What a decision carries of the stored profile.
DECISION_FIELDS = (
    "user_id",
    "seq",
    "segment",
    "segment_label",
    "segment_version",
    "churn_risk",
    "churn_band",
    "onboarding_path",
    "experiment_arms",
    "last_triggers",
    "as_of",
    "updated_at",
)


def problem(status: int, title: str, detail: str, **headers: str) -> Response:
    """An RFC 9457 problem document."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return Response(
        orjson.dumps(body), status, headers=headers, media_type="application/problem+json"
    )


def json(body: Any, **headers: str) -> Response:
    return Response(orjson.dumps(body), 200, headers=headers, media_type="application/json")


class DecisionApi:
    def __init__(
        self,
        store: ProfileStore,
        paths: PathMap,
        experiments: Experiments,
        api_keys: tuple[str, ...] = (),
        ping: Callable[[], bool] = lambda: True,
    ) -> None:
        self.store, self.paths, self.experiments = store, paths, experiments
        self.api_keys = tuple(key.encode() for key in api_keys)
        self.ping = ping

    def authorized(self, request: Request) -> bool:
        if not self.api_keys:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode()
        return scheme.lower() == "bearer" and any(
            hmac.compare_digest(given, key) for key in self.api_keys
        )

    def _profile(self, request: Request) -> dict[str, Any] | Response | None:
        user_id = request.path_params["user_id"]
        if not 0 < len(user_id) <= 256:
            return problem(400, "Bad user id", "user_id: 1 to 256 characters")
        try:
            return self.store.get(user_id)
        except ServerError as exc:
            return problem(503, "Profile store unavailable", str(exc), **{"Retry-After": "1"})

    async def decision(self, request: Request) -> Response:
        found = self._profile(request)
        if isinstance(found, Response):
            return found
        user_id = request.path_params["user_id"]
        if found is None:
            arms = self.experiments.assign(user_id, {})
            body = {
                "user_id": user_id,
                "known": False,
                "seq": 0,
                "segment": None,
                "segment_label": None,
                "churn_band": None,
                "onboarding_path": self.experiments.path(arms) or self.paths.default,
                "experiment_arms": arms,
                "last_triggers": [],
            }
            return json(body, **{"Cache-Control": "private, max-age=1"})
        etag = f'"{found.get("seq", 0)}"'
        headers = {"ETag": etag, "Cache-Control": "private, max-age=1"}
        if etag in (request.headers.get("if-none-match") or ""):
            return Response(status_code=304, headers=headers)
        body = {name: found.get(name) for name in DECISION_FIELDS}
        body["known"] = True
        body["model_versions"] = {"segments": found.get("segment_version")}
        return json(body, **headers)

    async def profile(self, request: Request) -> Response:
        found = self._profile(request)
        if isinstance(found, Response):
            return found
        if found is None:
            user_id = request.path_params["user_id"]
            return problem(404, "Unknown user", f"no profile for user {user_id!r}")
        return json(found, ETag=f'"{found.get("seq", 0)}"')

    async def healthz(self, request: Request) -> Response:
        return json({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if self.ping():
            return json({"status": "ready"})
        return problem(503, "Not ready", "the profile store does not answer")


def build_app(api: DecisionApi, cors_origins: tuple[str, ...] = ()) -> Starlette:
    async def guarded(
        route: str, handler: Callable[[Request], Awaitable[Response]], request: Request
    ) -> Response:
        started = time.perf_counter()
        if route.startswith("/v1") and not api.authorized(request):
            detail = "send Authorization: Bearer <api key>"
            response = problem(401, "Unauthorized", detail, **{"WWW-Authenticate": "Bearer"})
        else:
            response = await handler(request)
        LATENCY.labels(route).observe(time.perf_counter() - started)
        REQUESTS.labels(route, str(response.status_code)).inc()
        return response

    def route(path: str, handler: Callable[[Request], Awaitable[Response]]) -> Route:
        async def endpoint(request: Request) -> Response:
            return await guarded(path, handler, request)

        return Route(path, endpoint, methods=["GET"])

    async def not_found(request: Request, exc: Exception) -> Response:
        return problem(404, "Not found", f"no route {request.url.path}")

    async def failed(request: Request, exc: Exception) -> Response:
        return problem(500, "Internal error", type(exc).__name__)

    cors = Middleware(
        CORSMiddleware,
        allow_origins=list(cors_origins),
        allow_methods=["GET"],
        allow_headers=["Authorization", "If-None-Match"],
    )
    return Starlette(
        routes=[
            route("/v1/users/{user_id:str}/decision", api.decision),
            route("/v1/users/{user_id:str}/profile", api.profile),
            route("/healthz", api.healthz),
            route("/readyz", api.readyz),
            Mount("/metrics", make_asgi_app()),
        ],
        middleware=[cors],
        exception_handlers={404: not_found, 405: not_found, 500: failed},
    )


def serve(config: FirstmileConfig, host: str, port: int) -> None:
    """Run the API with uvicorn until interrupted."""
    import uvicorn

    store = RedisProfileStore.connect(config.redis.url, config.redis.key_prefix)

    def ping() -> bool:
        try:
            return bool(store.client.ping())
        except Exception:  # any failure to answer is "not ready"
            return False

    section = config.serve
    api = DecisionApi(
        store,
        PathMap.load(config.paths),
        Experiments.load(config.experiments),
        tuple(key.get_secret_value() for key in section.api_keys),
        ping,
    )
    app = build_app(api, tuple(section.cors_origins))
    auth = f"{len(api.api_keys)} API key(s)" if api.api_keys else "no API keys: /v1 is open"
    print(f"firstmile: serving decisions on http://{host}:{port} ({auth}; Redis "
          f"{config.redis.url}, prefix {config.redis.key_prefix})", file=sys.stderr)  # fmt: skip
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
