"""The ingress's FastAPI app before its routes: error handlers, the Label Studio routers and the guards.

Middleware order (outermost first): BearerAuth (who is calling: the tenant), TenantLimit (its bound on
requests in flight), BodySizeLimit (the body as it arrives). Starlette runs the last one added first.
"""

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from deployments import labelstudio
from deployments.http_errors import install_error_handlers
from deployments.limits import BearerAuth, BodySizeLimit, TenantLimit
from deployments.off_loop import OffLoopJSONRoute


def make_api() -> FastAPI:
    """FastAPIOffline: FastAPI with Swagger UI's and ReDoc's assets served from the installed package, so /docs
    works on a cluster without internet access."""
    api = FastAPIOffline(
        title="sam-serve",
        description="Segment Anything on Ray Serve: cached image embeddings, prompts answered by any decoder replica.",
        version="0.1.0",
    )
    api.router.route_class = OffLoopJSONRoute
    install_error_handlers(api)
    api.include_router(labelstudio.router)
    api.include_router(labelstudio.model_router)
    api.add_middleware(BodySizeLimit)
    api.add_middleware(TenantLimit)
    api.add_middleware(BearerAuth)
    return api
