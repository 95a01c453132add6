"""The local storage's refusals, answered as S3 answers them: an XML error with S3's code."""

from __future__ import annotations

from xml.sax.saxutils import escape

from starlette.responses import Response


class Refused(Exception):
    """An upload or download the storage refuses, answered with an S3-shaped error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> Response:
        """S3's XML error body with this status."""
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{escape(self.code)}</Code><Message>{escape(self.message)}</Message></Error>"
        )
        return Response(body, status_code=self.status, media_type="application/xml")


def malformed() -> Refused:
    """The body is not multipart/form-data as S3 reads it."""
    return Refused(400, "MalformedPOSTRequest", "The body of your POST request is not well-formed multipart/form-data.")


def denied(message: str = "Access Denied") -> Refused:
    """A token tampered with or expired, or a form its policy does not allow."""
    return Refused(403, "AccessDenied", message)


def ticket_used() -> Refused:
    """The upload ticket has stored its upload already (a ticket stores once)."""
    return denied("Invalid according to Policy: this upload ticket has been used.")
