"""The ingress's FastAPI app, made per replica once the ingress is built (Serve calls
`SamIngress.__serve_build_asgi_app__`): error handlers, the routes, the Label Studio wing and the guards;
nothing is attached at import.

Middleware order (outermost first): BearerAuth (who is calling: the tenant), TenantLimit (its bound on
requests in flight), BodySizeLimit (the body as it arrives). Starlette runs the last one added first.
"""

from typing import Any, cast

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from deployments import labelstudio
from deployments.http_errors import install_error_handlers
from deployments.limits import BearerAuth, BodySizeLimit, TenantLimit
from deployments.off_loop import OffLoopJSONRoute
from deployments.routes import IngressCalls, page_router, sam_router
from sam_core.settings import Settings


def make_api(ingress: IngressCalls, backend: labelstudio.LabelStudioBackend) -> FastAPI:
    """FastAPIOffline: FastAPI with Swagger UI's and ReDoc's assets served from the installed package, so /docs
    works on a cluster without internet access."""
    api = FastAPIOffline(
        title="sam-serve",
        description="Segment Anything on Ray Serve: cached image embeddings, prompts answered by any decoder replica.",
        version="0.1.0",
    )
    api.router.route_class = OffLoopJSONRoute
    install_error_handlers(api)
    api.state.labelstudio = backend
    api.include_router(labelstudio.router)
    api.include_router(labelstudio.model_router)
    api.include_router(sam_router(ingress))
    api.include_router(page_router(ingress))
    api.add_middleware(BodySizeLimit)
    api.add_middleware(TenantLimit)
    api.add_middleware(BearerAuth)
    return api


def _unserved(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("the OpenAPI document's app serves no requests")


class _NoIngress:
    """The ingress of an app that is only read for its shape: each of its calls is an error, and none is made."""

    def __getattr__(self, name: str) -> Any:
        return _unserved


def openapi_document(settings: Settings | None = None) -> dict[str, Any]:
    """The OpenAPI document every ingress replica serves at /openapi.json, without starting one: the routes and
    their models are declared by `make_api` alone (what the documentation site renders; tests/docs checks it is
    the one a running app serves)."""
    calls = cast(IngressCalls, _NoIngress())
    backend = labelstudio.LabelStudioBackend(calls.segment, cast(Any, calls), settings or Settings())
    return make_api(calls, backend).openapi()
