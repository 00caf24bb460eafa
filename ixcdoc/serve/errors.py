"""Errors in OpenAI's JSON shape, ``{"error": {message, type, param, code}}``, with a status."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ixcdoc.errors import InputError, IxcdocError, UsageError
from ixcdoc.serve.backend import Cancelled


class ErrorDetail(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(TypedDict):
    """OpenAI's error shape: every error response's body, and a failed stream's last event."""

    error: ErrorDetail


class ApiError(Exception):
    """An error to send as ``{"error": {message, type, param, code}}`` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: ErrorBody = {
            "error": {"message": message, "type": type, "param": param, "code": code}
        }
        self.headers = headers

    def response(self) -> JSONResponse:
        """The JSON response for this error."""
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


def invalid_request(errors: Sequence[Any]) -> ApiError:
    """pydantic's validation errors as one 400 naming the first field (``param``)."""
    first = errors[0] if errors else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    where = ".".join(loc) or "body"
    message = f"{where}: {first.get('msg', 'invalid')}"
    return ApiError(400, message, code="invalid_request", param=".".join(loc) or None)


def library_error(e: IxcdocError) -> ApiError:
    """ixcdoc's typed errors as API errors: the client's fault is 4xx, the model's 500."""
    if isinstance(e, InputError):
        status = 413 if e.code == "too_large" else 400
        return ApiError(status, e.message, code=e.code, param="messages")
    if isinstance(e, UsageError):  # the generic code gets OpenAI's name; specific ones stay
        code = "invalid_request" if e.code == "usage" else e.code
        return ApiError(400, e.message, code=code, param="messages")
    return ApiError(500, f"the model failed: {e.message}", type="server_error", code=e.code)


def model_failure(e: BaseException) -> ApiError:
    """A job's failure as an API error: 503 when the server stopped it, else as raised."""
    if isinstance(e, Cancelled):  # only the server cancels a job whose client is still there
        return ApiError(503, str(e), type="server_error", code="shutting_down")
    if isinstance(e, IxcdocError):
        return library_error(e)
    return ApiError(500, f"the model failed: {type(e).__name__}: {e}", type="server_error")


def add_error_handlers(app: FastAPI) -> None:
    """Every error ``app`` raises answered in OpenAI's shape: ``ApiError`` as it is, pydantic's
    validation errors as a 400, Starlette's 404/405 with a code, anything else as a 500."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        return invalid_request(e.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return ApiError(e.status_code, str(e.detail), code=code).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        message = f"internal error: {type(e).__name__}: {e}"
        return ApiError(500, message, type="server_error").response()
