"""A small blocking client for a node's admin HTTP endpoint (used by the ``ballast`` command).

Every failure — the node is not listening, it answered an error document, it answered
something that is not JSON — becomes one :class:`AdminClientError` whose message is fit to
print as the command's single error line.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import quote

from dht.ids import Address

DEFAULT_TIMEOUT = 30.0


class AdminClientError(Exception):
    """The admin endpoint could not be reached, or refused the request (``status`` if it
    answered)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AdminClient:
    """Talks JSON to one node's admin listener (``--admin HOST:PORT``).

    Args:
        address: the admin listener.
        timeout: seconds to wait for the connection and for each answer.
    """

    def __init__(self, address: Address, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.address = address
        self.timeout = timeout

    @property
    def url(self) -> str:
        """The endpoint's base URL."""
        host = f"[{self.address.host}]" if ":" in self.address.host else self.address.host
        return f"http://{host}:{self.address.port}"

    def request(self, method: str, path: str, document: object = None) -> dict[str, Any]:
        """Send one request and return the JSON object answered.

        Raises:
            AdminClientError: unreachable, timed out, an error status, or not JSON.
        """
        body = None if document is None else json.dumps(document).encode()
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        connection = http.client.HTTPConnection(
            self.address.host, self.address.port, timeout=self.timeout
        )
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            status, raw = response.status, response.read()
        except (OSError, http.client.HTTPException) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            if isinstance(error, socket.timeout | TimeoutError):
                reason = f"no answer within {self.timeout:.0f} s"
            raise AdminClientError(
                f"cannot reach the node's admin endpoint {self.url} ({reason}); "
                "is `ballast up` or `ballast node run` running, and is --admin right?"
            ) from None
        finally:
            connection.close()
        try:
            answer = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            answer = None
        if not isinstance(answer, dict):
            raise AdminClientError(
                f"{self.url}{path} answered HTTP {status} without a JSON object", status
            )
        if status >= 400:
            message = answer.get("error")
            text = message if isinstance(message, str) and message else f"HTTP {status}"
            raise AdminClientError(text, status)
        return answer

    # -- the operations -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The node's ``/status`` document."""
        return self.request("GET", "/status")

    def create_key(self, name: str | None = None) -> dict[str, Any]:
        """Create an S3 access key: ``{access_key, secret_key, name}``."""
        return self.request("POST", "/admin/s3-keys", {} if name is None else {"name": name})

    def list_keys(self) -> list[dict[str, Any]]:
        """Every S3 access key (without secrets)."""
        keys = self.request("GET", "/admin/s3-keys").get("keys")
        return [k for k in keys if isinstance(k, dict)] if isinstance(keys, list) else []

    def delete_key(self, access_key: str) -> dict[str, Any]:
        """Delete an S3 access key."""
        return self.request("DELETE", f"/admin/s3-keys/{quote(access_key, safe='')}")

    def create_bucket(
        self, name: str, *, redundancy: str | None, acl: str, owner: str | None
    ) -> dict[str, Any]:
        """Create a bucket; answers the bucket as listed."""
        document: dict[str, str] = {"name": name, "acl": acl}
        if redundancy is not None:
            document["redundancy"] = redundancy
        if owner is not None:
            document["owner"] = owner
        return self.request("POST", "/admin/buckets", document)

    def list_buckets(self) -> list[dict[str, Any]]:
        """Every bucket with its redundancy and ACL."""
        buckets = self.request("GET", "/admin/buckets").get("buckets")
        return [b for b in buckets if isinstance(b, dict)] if isinstance(buckets, list) else []

    def delete_bucket(self, name: str) -> dict[str, Any]:
        """Delete an empty bucket."""
        return self.request("DELETE", f"/admin/buckets/{quote(name, safe='')}")

    # -- the node's own operations (repair, drain, scrub) ---------------------------------

    def drain_progress(self) -> dict[str, Any]:
        """The node's drain document: ``{draining, blocks, registers, remaining, repair}``."""
        return self.request("GET", "/admin/node/drain")

    def set_draining(self, draining: bool) -> dict[str, Any]:
        """Start (``True``) or stop (``False``) draining the node; answers the drain document.

        The node persists the setting: a restarted node keeps draining.
        """
        return self.request("POST", "/admin/node/drain", {"draining": draining})

    def repair(self) -> dict[str, Any]:
        """Run one repair pass on the node now: ``{found_work, repair}``."""
        return self.request("POST", "/admin/node/repair", {})

    def scrub(self) -> dict[str, Any]:
        """Verify every record the node holds now and heal bad copies: ``{corrupt, repair}``.

        The node answers when the scrub is done, which takes the silo's size divided by its
        scrub rate: give the client a ``timeout`` to match.
        """
        return self.request("POST", "/admin/node/scrub", {})
