"""``GET /healthz``: 200 when every deployment is healthy, else ``503 service_unavailable`` naming those that are not.
Public (outside ``/v1/``). The check is the app's ``health`` callable (:class:`~lift3d.service.api.deps.AppServices`;
the Serve ingress asks Ray Serve for its application's status); without one the answer is always 200."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from lift3d.io.media_types import JSON
from lift3d.service.api.deps import AppServices, get_services
from lift3d.service.api.errors import error_response
from lift3d.service.api.openapi import error_responses
from lift3d.service.schemas import ServiceUnavailableError

__all__ = ["router"]

router = APIRouter()

_HEALTHY = {"type": "object", "required": ["status"], "properties": {
    "status": {"type": "string", "enum": ["ok"]},
    "deployments": {"type": "object", "additionalProperties": {"type": "string"},
                    "description": "Status of each deployment (Ray Serve)."}}}


@router.get("/healthz", summary="200 when every deployment is healthy, else 503",
            responses={200: {"description": "Healthy.", "content": {JSON: {"schema": _HEALTHY}}},
                       **error_responses(500, 503)})
async def healthz(services: AppServices = Depends(get_services)) -> Response:
    if services.health is None:
        return JSONResponse({"status": "ok"})
    ok, details = await services.health()
    if ok:
        return JSONResponse({"status": "ok", "deployments": details})
    unhealthy = [f"{name}: {status}" for name, status in details.items() if status != "HEALTHY"]
    error = ServiceUnavailableError("not ready")
    error.errors = unhealthy or ["not ready"]
    return error_response(error)
