"""Storage and tracking URLs: masking their passwords, and checking them before work starts.

Kept apart from ``search.track.tracker`` so that checking a URL imports neither MLflow nor
PyTorch: a command that fails on its options answers in a fraction of a second.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from search.common.errors import TrackingError


def mask_password(text: str, url: str) -> str:
    """``text`` (an error message that may quote ``url``) with the URL's password replaced."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return text
    return text.replace(password, "***") if password else text


def redact_url(url: str) -> str:
    """``url`` with any password replaced, so storage URLs can be logged safely."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


TRACKING_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "databricks")


def check_tracking_uri(uri: str) -> None:
    """Refuse an unknown scheme or a server that does not answer, before any work starts."""
    scheme = uri.partition(":")[0].partition("+")[0]
    if scheme not in TRACKING_SCHEMES:
        raise TrackingError(
            f"--tracking-uri {redact_url(uri)}: unknown scheme {scheme!r}; use "
            "http://host:5000 (an MLflow server) or sqlite:///path/mlflow.db"
        )
    if scheme in ("http", "https"):
        import urllib.request

        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10):
                pass
        except OSError as error:
            raise TrackingError(
                f"--tracking-uri {redact_url(uri)}: no MLflow server answers there ({error})"
            ) from error
