"""The server's errors and the one place their HTTP bodies are built.

AudioRequestError (vLLM's GracefulHTTPError: vLLM answers it with its own status)
├── 400  bad audio, bad parameters, too many windows, control tokens in text
├── 403  a media URL or file the server must not read
├── 413  audio or a body over a limit
└── 503  the server is full (with Retry-After)

Raised anywhere a request passes through (the media connector, the model's processor,
audiotext's routes), they reach the client as an OpenAI-style error object:
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from vllm.exceptions import GracefulHTTPError

RETRY_AFTER_S = 1


class AudioRequestError(GracefulHTTPError, ValueError):
    """A request the server refuses, with the HTTP status to answer and the culprit field.

    It is a ValueError too, so code that treats bad input as ValueError (vLLM's processor
    wrappers, offline `LLM.generate`) still sees bad input.
    """

    def __init__(self, message: str, status: int = 400, param: str | None = "messages") -> None:
        super().__init__(message, HTTPStatus(status))
        self.status = status
        self.param = param


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
