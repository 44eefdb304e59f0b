"""The server's errors and the one place their HTTP bodies are built.

AudioRequestError (a ValueError), built by `request_error(message, status, param, reason)`
├── 400  bad audio, too many windows, control tokens in text (vLLM's VLLMValidationError:
│        answered with the parameter named)
└── 403  a media URL or file the server must not read, 413 audio or a body over a limit,
         503 the server is full (vLLM's GracefulHTTPError: answered with its status)

Raised anywhere a request passes through (the media connector, the model's processor,
audiotext's routes), they reach the client as an OpenAI-style error object:
`{"error": {"message", "type", "param", "code"}}`. Those built with a reason count as that
refusal on `/metrics` (`audiotext_requests_refused_total`, once per request).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from vllm.exceptions import GracefulHTTPError, VLLMValidationError

from audiotext.server import metrics

RETRY_AFTER_S = 1


class AudioRequestError(ValueError):
    """A request the server refuses, with the HTTP status to answer and the culprit field.

    A ValueError, so code that treats bad input as ValueError (vLLM's processor wrappers,
    offline `LLM.generate`) sees bad input. Build one with `request_error`.
    """

    status: int
    param: str | None
    message: str

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class _BadRequest(VLLMValidationError, AudioRequestError):
    """400: vLLM answers it with the parameter named."""

    __str__ = AudioRequestError.__str__


class _Refused(GracefulHTTPError, AudioRequestError):
    """403, 413, 503: vLLM answers it with the status it carries."""


def request_error(
    message: str,
    status: int = 400,
    param: str | None = "messages",
    reason: metrics.Refusal | None = None,
) -> AudioRequestError:
    """The error to raise for a refused request, anywhere a request passes through.

    Args:
        message: what was wrong and what to do, for the client.
        status: the HTTP status to answer.
        param: the request field at fault.
        reason: the refusal to count on `/metrics` (None: not counted).
    """
    if reason is not None:
        metrics.refused(reason)
    error: AudioRequestError
    if status == 400:
        error = _BadRequest(message, parameter=param)
    else:
        error = _Refused(message, HTTPStatus(status))
    error.status, error.param, error.message = status, param, message
    return error


def error_body(message: str, status: int, param: str | None = None) -> dict[str, Any]:
    """The OpenAI-style error object for a status."""
    kind = {
        401: "AuthenticationError",
        404: "NotFoundError",
        413: "RequestTooLarge",
        503: "Overloaded",
        504: "Timeout",
    }.get(status, "BadRequestError" if status < 500 else "Error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def error_headers(status: int) -> dict[str, str]:
    """Headers an error response carries: a full server says when to come back."""
    return {"retry-after": str(RETRY_AFTER_S)} if status == 503 else {}


def error_bytes(message: str, status: int, param: str | None = None) -> bytes:
    return json.dumps(error_body(message, status, param)).encode()
