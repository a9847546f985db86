"""The HTTP application: the FHIR router for ``/fhir``, FastAPI for everything else."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from server import __version__, builtin, workflow
from server.auth.keys import KeyStore
from server.auth.tokens import TokenService
from server.clock import Clock, SystemClock
from server.config import Settings
from server.fhir.hooks import AppContext
from server.fhir.openapi import fhir_paths
from server.fhir.prepare import check_models
from server.fhir.router import FhirRouter
from server.fhir.structures import structures
from server.metrics import Metrics
from server.search.registry import registry
from server.storage import open_store
from server.storage.base import ResourceStore, StoreError

log = logging.getLogger("consilium.app")
FHIR_PREFIX = "/fhir"


class ConsiliumApp:
    """ASGI entry point. ``/fhir`` goes straight to the FHIR router (no framework in between);
    every other path, and the lifespan, to FastAPI."""

    def __init__(self, api: FastAPI, fhir: FhirRouter, store: ResourceStore):
        self.api = api
        self.fhir = fhir
        self.store = store

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path.startswith(FHIR_PREFIX) and (len(path) == len(FHIR_PREFIX)
                                                 or path[len(FHIR_PREFIX)] == "/"):
                await self.fhir(scope, receive, send)
                return
        await self.api(scope, receive, send)


def install_rules(context: AppContext) -> None:
    """Register every area's write rules (server.fhir.hooks) with the application."""
    for install in RULES:
        install(context.hooks)


#: Each area's ``install(hooks)``.
RULES: list[Any] = [workflow.install]


def warm_up() -> None:
    """Load the generated tables now, so that a broken table fails the start and not the first
    request, then freeze them out of the garbage collector's way: they live as long as the
    process, and without this every full collection walks their millions of objects."""
    structures()
    registry()
    gc.collect()
    gc.freeze()
    # Requests and bulk writes make many short-lived containers (index rows, JSON objects);
    # collecting the young generation every 700 allocations cost a quarter of a bulk writer's
    # time. Collections still happen, a few dozen times less often.
    gc.set_threshold(50_000, 20, 100)


def create_app(settings: Settings, clock: Clock | None = None) -> ConsiliumApp:
    """The application over the store the settings name. ``clock``: the time the workflow
    rules use (the system clock unless a test gives another)."""
    check_models(settings.model_check)
    store = open_store(settings, serving=True)
    keys = KeyStore(settings.keys_dir)
    keys.ensure()
    tokens = TokenService(keys)
    metrics = Metrics()
    warm_up()
    context = AppContext(settings, clock or SystemClock(), keys)
    install_rules(context)
    fhir = FhirRouter(settings, store, tokens, metrics, FHIR_PREFIX, context)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await builtin.install(store)
        yield
        fhir.access_log.flush()
        await store.close()

    api = FastAPI(title="Consilium", version=__version__, lifespan=lifespan,
                  description="FHIR R4 interoperability server for telemedicine networks. "
                              "The FHIR API lives under /fhir.")

    @api.get("/healthz", tags=["operations"])
    async def healthz() -> Response:
        try:
            await store.ping()
        except StoreError as exc:
            return JSONResponse({"status": "unavailable", "reason": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok", "version": __version__})

    @api.get("/metrics", tags=["operations"])
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @api.get("/auth/jwks", tags=["auth"])
    async def jwks() -> Response:
        return JSONResponse(keys.jwks(), headers={"Cache-Control": "max-age=300"})

    original_openapi = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = original_openapi()
            schema["paths"] = {**fhir_paths(FHIR_PREFIX), **schema.get("paths", {})}
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
    return ConsiliumApp(api, fhir, store)


def app_from_env() -> ConsiliumApp:
    """Factory for worker processes: settings come from CONSILIUM_* variables."""
    from server import logs

    settings = Settings.from_env()
    logs.setup(settings.log_level)
    return create_app(settings)
