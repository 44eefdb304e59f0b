"""audiotext client errors.

AudioTextError
├── InvalidAudioError        bad audio, raised before any network call
│   └── AudioTooLongError    longer than accepted
├── InvalidRequestError      a request or parameter the client can reject itself
└── APIError                 the server or the network failed the request
    ├── APIConnectionError   no answer: refused, reset, timed out
    └── APIStatusError       an HTTP error status (.status_code, .message)
        ├── BadRequestError          400, 404, 413, 422 ... (not retried)
        ├── AuthenticationError      401, 403
        ├── OverloadedError          429, 503 (retried, honouring Retry-After)
        └── ServerError              other 5xx (retried)
"""

from __future__ import annotations

import socket

import openai


class AudioTextError(Exception):
    """Root of every error the client raises."""


class InvalidAudioError(AudioTextError, ValueError):
    """The audio cannot be sent: missing file, undecodable, empty, or too short."""


class AudioTooLongError(InvalidAudioError):
    """The audio is longer than accepted (found while decoding, before decoding it all)."""

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


class InvalidRequestError(AudioTextError, ValueError):
    """The request or its parameters are malformed."""


class APIError(AudioTextError):
    """The request reached for the server and failed there or on the way."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class APIConnectionError(APIError):
    """The server could not be reached, or did not answer in time.

    `url` is the base URL tried; `reason` says what happened ("connection refused",
    "host not found", "timed out", ...).
    """

    def __init__(self, message: str, *, url: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason


class APIStatusError(APIError):
    """The server answered with an error status."""

    def __init__(self, message: str, *, status_code: int, body: object = None) -> None:
        super().__init__(f"{status_code}: {message}")
        self.message = message
        self.status_code = status_code
        self.body = body


class BadRequestError(APIStatusError):
    """The server rejected the request (4xx)."""


class AuthenticationError(APIStatusError):
    """Missing or wrong API key (401, 403)."""


class OverloadedError(APIStatusError):
    """The server is busy (429, 503); try again later."""


class ServerError(APIStatusError):
    """The server failed (5xx)."""


def from_openai(error: openai.OpenAIError, base_url: str | None = None) -> AudioTextError:
    """Translate an OpenAI SDK error into this tree (the caller chains it with `from`).

    Args:
        error: what the OpenAI SDK raised.
        base_url: the server's address, named in connection errors.
    """
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        cls: type[APIStatusError]
        if status in (401, 403):
            cls = AuthenticationError
        elif status in (429, 503):
            cls = OverloadedError
        elif status >= 500:
            cls = ServerError
        else:
            cls = BadRequestError
        return cls(_server_message(error), status_code=status, body=error.body)
    if isinstance(error, openai.APIConnectionError):
        reason = connection_failure(error)
        where = f" at {base_url}" if base_url else ""
        return APIConnectionError(
            f"cannot reach the server{where} ({reason}); is it running? Set base_url or "
            "AUDIOTEXT_BASE_URL to change the address",
            url=base_url,
            reason=reason,
        )
    return APIError(str(error))


def connection_failure(error: BaseException) -> str:
    """Why a connection failed, in a few words, from the exception's chain of causes."""
    if isinstance(error, openai.APITimeoutError):
        return "timed out"
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, socket.gaierror):
            return "host not found"
        if isinstance(seen, ConnectionResetError):
            return "connection reset"
        if isinstance(seen, TimeoutError):
            return "timed out"
        seen = seen.__cause__ or seen.__context__
    return str(error).rstrip(".").lower() or "connection error"


def is_unreachable(error: BaseException) -> bool:
    """True when retrying cannot help soon: nothing listens there, or no such host."""
    return connection_failure(error) in ("connection refused", "host not found")


def _server_message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return error.message
