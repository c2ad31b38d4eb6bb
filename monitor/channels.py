"""Where an alert goes: one small class per kind of channel (webhook, everything apprise reaches) behind `Channel`."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import re
import socket
import urllib.error
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from typing import Protocol, runtime_checkable
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import apprise

from fleetpulse.monitor.notification import Event, Notification, Severity
from fleetpulse.publisher.errors import FleetpulseError
from fleetpulse.publisher.protocol import format_timestamp

__all__ = ["AppriseChannel", "Channel", "DeliveryError", "WebhookChannel", "channel_for", "redact_url"]

_REDACTED = "***"
_TITLE_MAX_CHARS = 120
_ERROR_MAX_CHARS = 300
# A path segment this long, or at least _MIXED_MIN_CHARS long and mixing letters with digits, reads as a
# token (Slack's T…/B…/XXXX, Discord's webhook token, a Healthchecks UUID), not as a word like "hooks".
_SECRET_SEGMENT_MIN_CHARS = 20
_MIXED_MIN_CHARS = 8
_EMAIL = re.compile(r"[^@:/\s]+@[^@:/\s]+\.[^@:/\s]+")


class DeliveryError(FleetpulseError):
    """A notification did not reach its channel; the message says why for a human (and never holds a secret)."""


@runtime_checkable
class Channel(Protocol):
    """One destination for notifications.

    `name` is safe to log and store (see `redact_url`). `send` delivers one notification within the channel's
    timeout, or raises DeliveryError and nothing else. `delivery_id` is stable across retries of one delivery,
    so a receiver that supports it can drop duplicates.
    """

    name: str

    def send(self, notification: Notification, *, delivery_id: str | None = None) -> None: ...


def redact_url(url: str) -> str:
    """A display form of `url` that keeps scheme, host, port and plain path words, and hides every secret.

    Rules: a password becomes `***` (so does a user name that looks like a token); a path segment of 20+
    characters, or of 8+ characters mixing letters and digits, becomes `***`, and so does such a host
    outside http(s) (apprise schemes put tokens there: `pover://user@token`); query values become `***`
    (their keys stay, they say what is configured); the fragment is dropped. E-mail addresses stay.
    """
    parts = urlsplit(url.strip())
    if not parts.scheme or not parts.netloc:
        # Not a URL we can take apart: nothing of it is safe to show.
        return f"{parts.scheme}://{_REDACTED}" if parts.scheme else _REDACTED
    credentials, _, host_port = parts.netloc.rpartition("@")
    userinfo = ""
    if credentials:
        user, has_password, _ = credentials.partition(":")
        user = _REDACTED if _looks_secret(unquote(user)) else unquote(user)
        userinfo = f"{user}:{_REDACTED}@" if has_password else f"{user}@"
    # Taken apart by hand: `parts.hostname` would lower-case what some apprise schemes keep in the host.
    host, _, port = host_port.rpartition(":") if not host_port.endswith("]") else (host_port, "", "")
    if not host or not port.isdigit():
        host, port = host_port, ""
    if parts.scheme.lower() not in ("http", "https") and not _is_address(host) and _looks_secret(unquote(host)):
        host = _REDACTED
    netloc = f"{userinfo}{host}" + (f":{port}" if port else "")
    path = "/".join(_REDACTED if _looks_secret(unquote(part)) else unquote(part) for part in parts.path.split("/"))
    query = "&".join(f"{key}={_REDACTED}" for key, _ in parse_qsl(parts.query, keep_blank_values=True))
    return f"{parts.scheme}://{netloc}{path}" + (f"?{query}" if query else "")


def _is_address(host: str) -> bool:
    # IP literals mix digits and letters (IPv6) without being secrets; host names with dots are public too.
    return host.startswith("[") or all(part.isdigit() for part in host.split(".")) or "." in host


def _looks_secret(text: str) -> bool:
    if "@" in text:  # a mail recipient is not a credential; `user:password@` anywhere else is
        return not _EMAIL.fullmatch(text)
    if len(text) >= _SECRET_SEGMENT_MIN_CHARS:
        return True
    has_letter = any(char.isalpha() for char in text)
    has_digit = any(char.isdigit() for char in text)
    return len(text) >= _MIXED_MIN_CHARS and has_letter and has_digit


def _user_agent() -> str:
    try:
        return f"fleetpulse/{version('fleetpulse')}"
    except PackageNotFoundError:
        return "fleetpulse/dev"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # urllib turns a redirected POST into a body-less GET; a moved webhook must fail loudly instead.
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class WebhookChannel:
    """POSTs the JSON webhook body (SPEC-documented, version 1) to an http(s) URL; any 2xx counts as delivered."""

    def __init__(self, url: str, timeout_s: float = 5.0, *, name: str | None = None) -> None:
        parts = urlsplit(url)
        try:
            _ = parts.port  # only to check it: urllib would refuse a bad port at the first alert, not here
        except ValueError:
            raise ValueError(f"not a valid port in webhook URL: {redact_url(url)}") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) webhook URL: {redact_url(url)}")
        # urllib takes `user:password@` for part of the host name, so such a URL never delivered (issue 14
        # item 13): the user info leaves the URL and goes out as HTTP basic auth, as curl and browsers do.
        self._authorization: str | None = None
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._authorization = "Basic " + base64.b64encode(credentials.encode()).decode()
            parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
        self._url = urlunsplit(parts)
        self.timeout_s = timeout_s
        self.name = name or redact_url(url)
        self._opener = urllib.request.build_opener(_NoRedirects)
        self._user_agent = _user_agent()

    def __repr__(self) -> str:
        return f"WebhookChannel({self.name!r})"

    def send(self, notification: Notification, *, delivery_id: str | None = None) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": self._user_agent}
        if delivery_id is not None:
            headers["Idempotency-Key"] = delivery_id
        if self._authorization is not None:
            headers["Authorization"] = self._authorization
        try:
            request = urllib.request.Request(
                self._url, data=json.dumps(notification.webhook_body()).encode(), headers=headers, method="POST"
            )
            with self._opener.open(request, timeout=self.timeout_s) as response:
                status = response.status
                response.read(64 * 1024)  # drain a little so keep-alive servers don't see a reset; ignore the rest
        except urllib.error.HTTPError as error:
            error.close()
            raise DeliveryError(f"HTTP {error.code} from {self.name}") from None
        except urllib.error.URLError as error:
            raise DeliveryError(self._unreachable(error.reason)) from None
        except TimeoutError as error:
            raise DeliveryError(self._unreachable(error)) from None
        except (OSError, http.client.HTTPException) as error:
            raise DeliveryError(f"{type(error).__name__} from {self.name}: {error}") from None
        except ValueError as error:  # urllib's ValueErrors quote the whole URL, secrets included
            raise DeliveryError(f"{type(error).__name__} from {self.name}") from None
        if not 200 <= status < 300:
            raise DeliveryError(f"HTTP {status} from {self.name}")

    def _unreachable(self, reason: object) -> str:
        if isinstance(reason, TimeoutError):
            return f"timed out after {self.timeout_s:g} s: {self.name}"
        if isinstance(reason, ConnectionRefusedError):
            return f"connection refused: {self.name}"
        if isinstance(reason, socket.gaierror):
            return f"cannot resolve host: {self.name} ({reason.strerror})"
        detail = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
        return f"cannot reach {self.name}: {detail}"


class AppriseChannel:
    """Any non-http(s) URL apprise understands (mailto://, slack://, ntfy://, json://, pagerduty://...).

    The URL is checked when the channel is built, so a typo fails at startup rather than at the first alert.
    apprise's own logging stays out of ours (unless its logger was configured, or the root logger is at DEBUG);
    what it warns about during a failed send ends up in the DeliveryError instead.
    """

    def __init__(self, url: str, timeout_s: float = 30.0, *, name: str | None = None) -> None:
        _quiet_apprise_logger()
        self._apprise = apprise.Apprise()
        try:
            understood = self._apprise.add(url)
        except Exception:  # apprise reports bad URLs by returning False; anything else is as bad
            understood = False
        if not understood:
            raise ValueError(f"not a URL apprise understands: {redact_url(url)}")
        if len(self._apprise) != 1:
            # apprise reads "a, b" as two services; one channel is one destination with one name.
            raise ValueError(f"one URL per channel, not {len(self._apprise)}: {redact_url(url)}")
        self.timeout_s = timeout_s
        self.name = name or _apprise_display_name(self._apprise)

    def __repr__(self) -> str:
        return f"AppriseChannel({self.name!r})"

    def send(self, notification: Notification, *, delivery_id: str | None = None) -> None:
        # delivery_id has no place in apprise's services; receivers of these see each retry as a new message.
        try:
            result = self._apprise.notify(
                body=_plain_text_body(notification),
                title=_shorten(notification.summary(), _TITLE_MAX_CHARS),
                notify_type=_notify_type(notification),
                # TEXT: an agent's strings (reason, labels) are text. apprise (2.3) escapes a text body for the
                # services that render HTML (e-mail) or Markdown; a title is escaped with the body where a
                # service blends the two, and goes to the service's own title field (a mail Subject) elsewhere.
                body_format=apprise.NotifyFormat.TEXT,
                timeout=self.timeout_s,
            )
            if result:
                return
            said = "; ".join(entry.message for entry in result.logs())
        except Exception as error:  # a plugin bug must not escape as anything but a failed delivery
            raise DeliveryError(f"{self.name}: {type(error).__name__}: {error}") from None
        status = getattr(result.status, "name", str(result.status)).lower()
        detail = f": {said}" if said else ""
        raise DeliveryError(_shorten(f"{self.name}: apprise reports {status}{detail}", _ERROR_MAX_CHARS))


def channel_for(url: str, *, name: str | None = None) -> Channel:
    """The channel for one URL: http(s) → WebhookChannel, anything else → AppriseChannel; ValueError if unusable.

    `name` replaces the redacted URL as the display name (the operator's own label, e.g. "oncall-slack").
    """
    scheme = urlsplit(url.strip()).scheme.lower()
    if scheme in ("http", "https"):
        return WebhookChannel(url.strip(), name=name)
    return AppriseChannel(url.strip(), name=name)


_NOTIFY_TYPES = {
    Severity.CRITICAL: apprise.NotifyType.FAILURE,
    Severity.WARNING: apprise.NotifyType.WARNING,
    Severity.INFO: apprise.NotifyType.INFO,
}


def _notify_type(notification: Notification) -> apprise.NotifyType:
    if notification.event is Event.RESOLVE:
        return apprise.NotifyType.SUCCESS
    return _NOTIFY_TYPES.get(notification.severity, apprise.NotifyType.INFO)


def _plain_text_body(notification: Notification) -> str:
    lines = [
        notification.summary(),
        "",
        f"agent: {notification.agent}",
        f"event: {notification.event.value}",
        f"state: {notification.state}",
        f"severity: {notification.severity.value}",
        f"incident: {notification.incident_id}",
        f"at: {format_timestamp(notification.at)}",
    ]
    if notification.reason:
        lines.append(f"reason: {notification.reason}")
    if notification.duration_s is not None:
        lines.append(f"duration_s: {notification.duration_s:.1f}")
    if notification.impacted:
        lines.append(f"impacted: {', '.join(notification.impacted)}")
    if notification.rule:
        lines.append(f"rule: {notification.rule}")
    return "\n".join(lines)


def _shorten(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + "…"


def _apprise_display_name(client: apprise.Apprise) -> str:
    # apprise knows which parts of its own schemes are secret (slack://T...A/B...B/****); its defaults
    # in the query (overflow=, retry=...) are noise, so only its privacy URL's path is kept.
    private = urlsplit(client[0].url(privacy=True))
    return redact_url(f"{private.scheme}://{private.netloc}{private.path.rstrip('/')}")


def _quiet_apprise_logger() -> None:
    # apprise logs every send (and, at DEBUG, every payload) through its own logger; leave an explicit
    # setting alone so that debugging it stays a one-line logging change.
    apprise_logger = logging.getLogger("apprise")
    if apprise_logger.level == logging.NOTSET and not apprise_logger.isEnabledFor(logging.DEBUG):
        # WARNING still reaches the per-call capture that AppriseChannel.send quotes in its DeliveryError.
        apprise_logger.setLevel(logging.WARNING)
        apprise_logger.propagate = False
