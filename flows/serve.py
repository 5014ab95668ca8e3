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
- OpenFeature Remote Evaluation Protocol (OFREP): ``POST /ofrep/v1/evaluate/flags/{key}``
  and ``POST /ofrep/v1/evaluate/flags`` (bulk, with ETag), ``targetingKey`` = the user
  id. Flags: ``onboarding-path``, ``segment``, ``churn-band`` and each experiment's key
  (the arm). Errors in the protocol's shape (``errorCode``: ``PARSE_ERROR``,
  ``INVALID_CONTEXT``, ``TARGETING_KEY_MISSING``, ``FLAG_NOT_FOUND``).
- ``GET /healthz`` (the process answers), ``GET /readyz`` (Redis answers),
  ``GET /metrics`` (Prometheus: requests by route and status, latency).

With ``[serve] api_keys`` set, every ``/v1`` and ``/ofrep`` request needs
``Authorization: Bearer <key>``;
CORS for browser apps from ``[serve] cors_origins``.

Why Starlette on uvicorn: a small, well-kept ASGI toolkit (routing, middleware, CORS) on
the usual production server, without a framework's validation layer that routes of one
path parameter do not need.
"""

from __future__ import annotations

import hashlib
import hmac
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import Counter, Histogram, make_asgi_app
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route

from firstmile.flows.config import FirstmileConfig
from firstmile.operators.errors import ServerError
from firstmile.operators.playbook import Playbooks
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

#: The report page is rendered again at most this often (seconds): it reads every profile.
PAGE_TTL_S = 30

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


def ofrep_error(status: int, key: str | None, code: str, details: str) -> Response:
    """An error in the shape the OpenFeature Remote Evaluation Protocol gives it."""
    body = {"errorCode": code, "errorDetails": details, **({"key": key} if key else {})}
    return Response(orjson.dumps(body), status, media_type="application/json")


def json(body: Any, **headers: str) -> Response:
    return Response(orjson.dumps(body), 200, headers=headers, media_type="application/json")


class DecisionApi:
    def __init__(
        self,
        store: ProfileStore,
        playbooks: Playbooks,
        api_keys: tuple[str, ...] = (),
        ping: Callable[[], bool] = lambda: True,
        page: Callable[[], str] | None = None,
    ) -> None:
        """``playbooks``: the paths and experiments in force (what ``firstmile publish``
        published, as the job reads them), for the defaults of users the store lacks."""
        self.store, self.playbooks = store, playbooks
        self.api_keys = tuple(key.encode() for key in api_keys)
        self.ping = ping
        self._page = page
        self._rendered: tuple[float, str] | None = None

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

    def _decision(self, user_id: str, found: dict[str, Any] | None) -> dict[str, Any]:
        """The decision for a stored profile, or the default for an id the store lacks."""
        if found is None:
            play = self.playbooks.at(time.time())
            arms = play.experiments.assign(user_id, {})
            return {
                "user_id": user_id,
                "known": False,
                "seq": 0,
                "segment": None,
                "segment_label": None,
                "churn_band": None,
                "onboarding_path": play.experiments.path(arms) or play.paths.default,
                "experiment_arms": arms,
                "last_triggers": [],
            }
        body = {name: found.get(name) for name in DECISION_FIELDS}
        body["known"] = True
        body["model_versions"] = {"segments": found.get("segment_version")}
        return body

    async def decision(self, request: Request) -> Response:
        found = self._profile(request)
        if isinstance(found, Response):
            return found
        body = self._decision(request.path_params["user_id"], found)
        headers = {"Cache-Control": "private, max-age=1"}
        if found is not None:
            headers["ETag"] = etag = f'"{body["seq"]}"'
            if etag in (request.headers.get("if-none-match") or ""):
                return Response(status_code=304, headers=headers)
        return json(body, **headers)

    def flags(self, decision: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The decision as OpenFeature flags: key -> value, variant, reason, metadata."""
        known = decision["known"]
        reason = "TARGETING_MATCH" if known else "DEFAULT"

        def flag(value: Any, metadata: dict[str, Any] | None = None, why: str = reason) -> Any:
            text = str(value) if value is not None else "none"
            return {"value": text, "variant": text, "reason": why, "metadata": metadata or {}}

        flags = {
            "onboarding-path": flag(decision["onboarding_path"]),
            "segment": flag(
                decision["segment"],
                {
                    "label": decision["segment_label"] or "",
                    "version": decision.get("segment_version") or "",
                },
            ),
            "churn-band": flag(decision["churn_band"]),
        }
        arms = decision["experiment_arms"] or {}
        for experiment in self.playbooks.at(time.time()).experiments.experiments:
            arm = arms.get(experiment.key)
            flags[experiment.key] = (
                flag(arm, {"experiment": experiment.key}, "SPLIT")
                if arm is not None
                else flag(experiment.control, {"experiment": experiment.key}, "DEFAULT")
            )
        return flags

    async def _ofrep_user(self, request: Request) -> tuple[str, dict[str, Any]] | Response:
        """(targeting key, decision) of an OFREP request, or its error response."""
        key = request.path_params.get("key")
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError as exc:
            return ofrep_error(400, key, "PARSE_ERROR", f"the body is not JSON: {exc}")
        context = body.get("context", {}) if isinstance(body, dict) else None
        if not isinstance(context, dict):
            return ofrep_error(400, key, "INVALID_CONTEXT", "body.context: an object is needed")
        user_id = context.get("targetingKey")
        if not isinstance(user_id, str) or not 0 < len(user_id) <= 256:
            return ofrep_error(
                400, key, "TARGETING_KEY_MISSING", "context.targetingKey: the user id (text)"
            )
        try:
            found = self.store.get(user_id)
        except ServerError as exc:
            return ofrep_error(503, key, "GENERAL", str(exc))
        return user_id, self._decision(user_id, found)

    async def ofrep_flag(self, request: Request) -> Response:
        held = await self._ofrep_user(request)
        if isinstance(held, Response):
            return held
        key = request.path_params["key"]
        flag = self.flags(held[1]).get(key)
        if flag is None:
            return ofrep_error(404, key, "FLAG_NOT_FOUND", f"no flag {key!r}")
        return json({"key": key, **flag})

    async def ofrep_bulk(self, request: Request) -> Response:
        held = await self._ofrep_user(request)
        if isinstance(held, Response):
            return held
        user_id, decision = held
        etag = f'"{hashlib.sha256(user_id.encode()).hexdigest()[:16]}-{decision["seq"]}"'
        if etag in (request.headers.get("if-none-match") or ""):
            return Response(status_code=304, headers={"ETag": etag})
        flags = [{"key": key, **flag} for key, flag in self.flags(decision).items()]
        return json({"flags": flags}, ETag=etag)

    async def profile(self, request: Request) -> Response:
        found = self._profile(request)
        if isinstance(found, Response):
            return found
        if found is None:
            user_id = request.path_params["user_id"]
            return problem(404, "Unknown user", f"no profile for user {user_id!r}")
        return json(found, ETag=f'"{found.get("seq", 0)}"')

    async def page(self, request: Request) -> Response:
        """The report page of the live stores, rendered at most every ``PAGE_TTL_S``."""
        if self._page is None:
            return problem(404, "Not found", "no report page configured")
        held = self._rendered
        if held is None or time.monotonic() - held[0] > PAGE_TTL_S:
            try:
                held = self._rendered = (time.monotonic(), await run_in_threadpool(self._page))
            except ServerError as exc:
                return problem(503, "Stores unavailable", str(exc), **{"Retry-After": "5"})
        return HTMLResponse(held[1], headers={"Cache-Control": f"private, max-age={PAGE_TTL_S}"})

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
        guarded_route = route == "/" or route.startswith(("/v1", "/ofrep"))
        if guarded_route and not api.authorized(request):
            detail = "send Authorization: Bearer <api key>"
            response = problem(401, "Unauthorized", detail, **{"WWW-Authenticate": "Bearer"})
        else:
            response = await handler(request)
        LATENCY.labels(route).observe(time.perf_counter() - started)
        REQUESTS.labels(route, str(response.status_code)).inc()
        return response

    def route(
        path: str, handler: Callable[[Request], Awaitable[Response]], method: str = "GET"
    ) -> Route:
        async def endpoint(request: Request) -> Response:
            return await guarded(path, handler, request)

        return Route(path, endpoint, methods=[method])

    async def not_found(request: Request, exc: Exception) -> Response:
        return problem(404, "Not found", f"no route {request.url.path}")

    async def failed(request: Request, exc: Exception) -> Response:
        return problem(500, "Internal error", type(exc).__name__)

    cors = Middleware(
        CORSMiddleware,
        allow_origins=list(cors_origins),
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "If-None-Match", "Content-Type"],
    )
    return Starlette(
        routes=[
            route("/v1/users/{user_id:str}/decision", api.decision),
            route("/v1/users/{user_id:str}/profile", api.profile),
            route("/ofrep/v1/evaluate/flags/{key:str}", api.ofrep_flag, "POST"),
            route("/ofrep/v1/evaluate/flags", api.ofrep_bulk, "POST"),
            route("/", api.page),
            route("/healthz", api.healthz),
            route("/readyz", api.readyz),
            Mount("/metrics", make_asgi_app()),
        ],
        middleware=[cors],
        exception_handlers={404: not_found, 405: not_found, 500: failed},
    )


def live_page(
    config: FirstmileConfig, store: RedisProfileStore, playbooks: Playbooks
) -> Callable[[], str]:
    """The report page of what the running job keeps in Redis (``flows.page``)."""

    def render_page() -> str:
        from firstmile.flows.page import from_live, render
        from firstmile.flows.report import experiments_summary, snapshot_summary
        from firstmile.online_models.snapshot import verify
        from firstmile.operators.errors import ModelError
        from firstmile.state.experiment_store import RedisExperimentStore
        from firstmile.state.model_store import RedisModelStore

        prefix = config.redis.key_prefix
        models = RedisModelStore(store.client, prefix)
        held, key = models.latest(), config.models.signing_key
        summary: dict[str, Any] = {}
        if held is not None and key is not None:
            try:
                keys = {config.models.signing_key_id: key.get_secret_value().encode()}
                summary = snapshot_summary(verify(held[1], keys))
            except ModelError:
                summary = {}  # a refused snapshot is not shown
        history = [orjson.loads(entry) for entry in models.history()]
        readouts = experiments_summary(
            playbooks.at(time.time()).experiments, RedisExperimentStore(store.client, prefix)
        )
        return render(from_live(store.scan(), summary, history, readouts, "firstmile (live)"))

    return render_page


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
    from firstmile.flows.run import published_playbooks
    from firstmile.state.playbook_store import PlaybookStore

    playbooks = published_playbooks(config, PlaybookStore(store.client, config.redis.key_prefix))
    api = DecisionApi(
        store,
        playbooks,
        tuple(key.get_secret_value() for key in section.api_keys),
        ping,
        live_page(config, store, playbooks),
    )
    app = build_app(api, tuple(section.cors_origins))
    auth = f"{len(api.api_keys)} API key(s)" if api.api_keys else "no API keys: /v1 is open"
    print(f"firstmile: serving decisions on http://{host}:{port} ({auth}; Redis "
          f"{config.redis.url}, prefix {config.redis.key_prefix})", file=sys.stderr)  # fmt: skip
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
