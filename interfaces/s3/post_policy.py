"""Authentication and policy checks of S3 browser uploads (PostObject), sans-IO.

Theory of operation
-------------------
A form posted to a bucket URL carries its credentials in its fields instead of an
``Authorization`` header (sources: the S3 API reference, "Browser-Based Uploads Using POST
(AWS Signature Version 4)", "POST Policy" and "POST Object"):

* ``policy`` is a base64 JSON document ``{"expiration": ISO8601, "conditions": [...]}``;
* SigV4: ``x-amz-algorithm`` = ``AWS4-HMAC-SHA256``, ``x-amz-credential`` =
  ``AKID/YYYYMMDD/REGION/s3/aws4_request``, ``x-amz-date`` and ``x-amz-signature``, the hex
  HMAC-SHA256 of the policy's base64 **text** under the SigV4 signing key of the credential's
  scope;
* legacy SigV2 (``AWSAccessKeyId`` and ``signature``, the base64 HMAC-SHA1 of the policy's
  base64 text under the secret), accepted like the server's other SigV2 requests, because
  boto3's ``generate_presigned_post`` still emits it by default in us-east-1.

Signatures are compared in constant time. A form without a ``policy`` is anonymous; S3 lets
anonymous forms write only to ``public-read-write`` buckets, Ballast refuses them all
(``AccessDenied``).

The policy is checked against the form fields that came **before** the file (fields after
it are ignored, as by S3): names compare case-insensitively; ``$bucket`` is the bucket of
the URL. Conditions are ``{"field": "value"}`` or ``["eq", "$field", "value"]`` (exact),
``["starts-with", "$field", "prefix"]`` (an empty prefix allows anything; for
``Content-Type`` a comma-separated list whose every item must start with the prefix), and
``["content-length-range", min, max]`` on the file's size, which only the body stream can
check (:meth:`PostPolicy.check_size`, called as the bytes arrive, so an oversized file is
refused before it is stored). A field absent from the form has the value ``""``. Every
form field except ``x-amz-signature``, ``file``, ``policy``, ``x-ignore-*`` (and, for
SigV2, ``AWSAccessKeyId`` and ``signature``) must be named by some condition. Failures are
``AccessDenied`` with S3's messages ("Invalid according to Policy: ..."); a policy that does
not decode is ``InvalidPolicyDocument``. Nothing here performs I/O; the secret lookup is a
plain callback.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .errors import S3Error
from .sigv4 import (
    ALGORITHM,
    SecretLookup,
    check_scope,
    derive_signing_key,
    parse_amz_date,
    parse_credential,
    secret_for,
    sign,
    sign_v2,
)

#: Fields no condition needs to name (besides ``x-ignore-*``).
EXEMPT_FIELDS = frozenset({"x-amz-signature", "file", "policy"})
#: Also exempt in a SigV2 form.
EXEMPT_FIELDS_V2 = frozenset({"awsaccesskeyid", "signature"})
_V4_FIELDS = ("x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-signature")
_V2_FIELDS = ("awsaccesskeyid", "signature")
_OPERATORS = frozenset({"eq", "starts-with"})


@dataclass(frozen=True)
class Condition:
    """One condition of a POST policy.

    Attributes:
        operator: ``"eq"``, ``"starts-with"`` or ``"content-length-range"``.
        field: the form field it applies to, lower-case, without ``$`` (``""`` for a range).
        value: the value or prefix.
        minimum: for a range, the smallest file size allowed.
        maximum: for a range, the largest file size allowed.
        text: the condition as S3 quotes it in errors, e.g. ``["eq", "$key", "a"]``.
    """

    operator: str
    field: str = ""
    value: str = ""
    minimum: int = 0
    maximum: int = 0
    text: str = ""

    def holds(self, value: str) -> bool:
        """Whether a field's ``value`` satisfies this (``eq`` or ``starts-with``) condition."""
        if self.operator == "eq":
            return value == self.value
        if self.field == "content-type":
            return all(item.strip().startswith(self.value) for item in value.split(","))
        return value.startswith(self.value)


@dataclass(frozen=True)
class PostPolicy:
    """A decoded POST policy document.

    Attributes:
        expiration: when the policy stops being valid (UTC).
        conditions: the conditions, in document order.
    """

    expiration: datetime
    conditions: tuple[Condition, ...]

    @property
    def size_range(self) -> tuple[int, int | None]:
        """The file sizes every ``content-length-range`` allows: ``(min, max)``, ``max``
        ``None`` without such a condition."""
        ranges = [c for c in self.conditions if c.operator == "content-length-range"]
        if not ranges:
            return 0, None
        return max(c.minimum for c in ranges), min(c.maximum for c in ranges)

    def check_size(self, size: int, *, final: bool) -> None:
        """Check the file's size so far against ``content-length-range``.

        Args:
            size: bytes of the file received so far.
            final: whether the file is complete (only then is the minimum checked).

        Raises:
            S3Error: ``EntityTooLarge`` or ``EntityTooSmall``.
        """
        low, high = self.size_range
        if high is not None and size > high:
            raise S3Error(
                "EntityTooLarge",
                "Your proposed upload exceeds the maximum allowed size",
                extra={"ProposedSize": str(size), "MaxSizeAllowed": str(high)},
            )
        if final and size < low:
            raise S3Error(
                "EntityTooSmall",
                "Your proposed upload is smaller than the minimum allowed size",
                extra={"ProposedSize": str(size), "MinSizeAllowed": str(low)},
            )


@dataclass(frozen=True)
class FormAuth:
    """Who signed a form, and with what policy.

    Attributes:
        access_key: the access key whose secret signed the policy.
        policy: the decoded policy.
        signature_version: 4, or 2 for a legacy SigV2 form.
    """

    access_key: str
    policy: PostPolicy
    signature_version: int


def policy_denied(reason: str) -> S3Error:
    """``AccessDenied`` with S3's "Invalid according to Policy" message."""
    return S3Error("AccessDenied", f"Invalid according to Policy: {reason}")


def _invalid_policy(reason: str) -> S3Error:
    return S3Error("InvalidPolicyDocument", f"Invalid Policy: {reason}")


def _missing_field(name: str) -> S3Error:
    return S3Error(
        "InvalidArgument",
        f"Bucket POST must contain a field named '{name}'. If it is specified, please check "
        "the order of the fields.",
        extra={"ArgumentName": name, "ArgumentValue": ""},
    )


def claimed_access_key(fields: Mapping[str, str]) -> str | None:
    """The access key a form names (``x-amz-credential`` or ``AWSAccessKeyId``), unverified.

    Args:
        fields: the form fields before the file, names lower-cased.
    """
    credential = fields.get("x-amz-credential")
    if credential is not None:
        return credential.partition("/")[0] or None
    return fields.get("awsaccesskeyid") or None


def authenticate_form(
    fields: Mapping[str, str],
    lookup_secret: SecretLookup,
    now: datetime,
    *,
    region: str | None = None,
    allow_sigv2: bool = True,
) -> FormAuth:
    """Verify a form's signature and decode its policy; refuse an expired policy.

    Args:
        fields: the form fields before the file, names lower-cased.
        lookup_secret: maps an access key id to its secret, or ``None`` if unknown.
        now: the current time (timezone-aware).
        region: the region of this endpoint; ``None`` accepts any in the credential.
        allow_sigv2: accept ``AWSAccessKeyId`` and ``signature`` (else ``InvalidRequest``).

    Raises:
        S3Error: ``AccessDenied`` (no policy; expired policy), ``InvalidArgument`` (a
            missing or malformed signature field), ``InvalidAccessKeyId``,
            ``SignatureDoesNotMatch``, ``InvalidPolicyDocument``, ``InvalidRequest``.
    """
    policy_text = fields.get("policy")
    if policy_text is None:
        raise S3Error(
            "AccessDenied", "Anonymous POST uploads are not allowed: the form needs a policy"
        )
    v4 = any(name in fields for name in _V4_FIELDS)
    v2 = any(name in fields for name in _V2_FIELDS)
    if v4 and v2:
        raise S3Error(
            "InvalidArgument",
            "Only one auth mechanism allowed: either the x-amz-* fields or AWSAccessKeyId "
            "and signature",
            extra={"ArgumentName": "x-amz-signature"},
        )
    if v2:
        if not allow_sigv2:
            raise S3Error(
                "InvalidRequest",
                "The authorization mechanism you have provided is not supported. Please use "
                "AWS4-HMAC-SHA256.",
            )
        access_key = _verify_v2(fields, policy_text, lookup_secret)
        version = 2
    else:
        access_key = _verify_v4(fields, policy_text, lookup_secret, region)
        version = 4
    policy = decode_policy(policy_text)
    if now >= policy.expiration:
        raise policy_denied("Policy expired.")
    return FormAuth(access_key, policy, version)


def _required(fields: Mapping[str, str], name: str) -> str:
    value = fields.get(name)
    if value is None:
        raise _missing_field(name)
    return value


def _verify_v4(
    fields: Mapping[str, str], policy_text: str, lookup_secret: SecretLookup, region: str | None
) -> str:
    algorithm = _required(fields, "x-amz-algorithm")
    if algorithm != ALGORITHM:
        raise S3Error(
            "InvalidArgument",
            f"Only {ALGORITHM} is supported as x-amz-algorithm",
            extra={"ArgumentName": "x-amz-algorithm", "ArgumentValue": algorithm[:64]},
        )
    credential = parse_credential(_required(fields, "x-amz-credential"), "InvalidArgument")
    amz_date = _required(fields, "x-amz-date")
    try:
        parse_amz_date(amz_date)
    except ValueError:
        raise S3Error(
            "InvalidArgument",
            "x-amz-date must be in the ISO 8601 basic format YYYYMMDD'T'HHMMSS'Z'",
            extra={"ArgumentName": "x-amz-date", "ArgumentValue": amz_date[:64]},
        ) from None
    check_scope(credential, amz_date, region, "s3", "InvalidArgument")
    claimed = _required(fields, "x-amz-signature")
    secret = secret_for(credential.access_key, lookup_secret)
    key = derive_signing_key(secret, credential.date, credential.region, credential.service)
    expected = sign(key, policy_text)
    if not hmac.compare_digest(expected.encode(), claimed.strip().encode("utf-8", "replace")):
        raise S3Error("SignatureDoesNotMatch")
    return credential.access_key


def _verify_v2(fields: Mapping[str, str], policy_text: str, lookup_secret: SecretLookup) -> str:
    access_key = _required(fields, "awsaccesskeyid")
    claimed = _required(fields, "signature")
    expected = sign_v2(secret_for(access_key, lookup_secret), policy_text)
    if not hmac.compare_digest(expected, claimed.strip().encode("utf-8", "replace")):
        raise S3Error("SignatureDoesNotMatch")
    return access_key


# -- the policy document --------------------------------------------------------------------


def decode_policy(text: str) -> PostPolicy:
    """Decode a base64 JSON POST policy.

    Raises:
        S3Error: ``InvalidPolicyDocument`` if it is not base64 of a JSON object with an ISO
            8601 ``expiration`` and a list of well-formed ``conditions``.
    """
    try:
        raw = base64.b64decode("".join(text.split()).encode("ascii"), validate=True)
        document = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeError, binascii.Error, RecursionError):
        raise _invalid_policy("Invalid JSON.") from None
    if not isinstance(document, dict):
        raise _invalid_policy("Invalid JSON.")
    if "expiration" not in document:
        raise _invalid_policy("Policy missing expiration.")
    if "conditions" not in document:
        raise _invalid_policy("Policy missing conditions.")
    conditions = document["conditions"]
    if not isinstance(conditions, list):
        raise _invalid_policy("Invalid 'conditions' value: it must be a list.")
    parsed: list[Condition] = []
    for item in conditions:
        parsed.extend(_conditions(item))
    return PostPolicy(_expiration(document["expiration"]), tuple(parsed))


def _expiration(value: Any) -> datetime:
    if not isinstance(value, str):
        raise _invalid_policy("Invalid 'expiration' value: it must be an ISO 8601 string.")
    try:
        when = datetime.fromisoformat(value)
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except (ValueError, OverflowError):
        raise _invalid_policy(f"Invalid 'expiration' value: '{value[:64]}'") from None


def _quoted(item: Any) -> str:
    return json.dumps(item, ensure_ascii=False)[:256]


def _conditions(item: Any) -> list[Condition]:
    if isinstance(item, dict):
        out = []
        for name, value in item.items():
            if not isinstance(value, str):
                raise _invalid_policy(f"Invalid Simple-Condition: {_quoted(item)}")
            text = _quoted(["eq", f"${name}", value])
            out.append(Condition("eq", name.lower(), value, text=text))
        return out
    if not isinstance(item, list) or not item or not isinstance(item[0], str):
        raise _invalid_policy(f"Invalid Condition: {_quoted(item)}")
    operator = item[0].lower()
    if operator == "content-length-range":
        if len(item) != 3:
            raise _invalid_policy(f"Invalid Condition: {_quoted(item)}")
        low, high = _size(item[1], item), _size(item[2], item)
        if low > high:
            raise _invalid_policy(f"Invalid Condition: {_quoted(item)}")
        return [Condition(operator, minimum=low, maximum=high, text=_quoted(item))]
    if operator not in _OPERATORS:
        raise _invalid_policy(f"Invalid Condition: unknown operation {_quoted(item[0])}")
    if (
        len(item) != 3
        or not isinstance(item[1], str)
        or not isinstance(item[2], str)
        or not item[1].startswith("$")
        or len(item[1]) < 2
    ):
        raise _invalid_policy(f"Invalid Condition: {_quoted(item)}")
    return [Condition(operator, item[1][1:].lower(), item[2], text=_quoted(item))]


def _size(value: Any, item: Any) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _invalid_policy(f"Invalid Condition: {_quoted(item)}")


def check_conditions(
    policy: PostPolicy,
    fields: Mapping[str, str],
    *,
    bucket: str,
    signature_version: int = 4,
) -> None:
    """Check every ``eq`` and ``starts-with`` condition, and that each field is covered.

    ``content-length-range`` is left to :meth:`PostPolicy.check_size`.

    Args:
        policy: the decoded policy.
        fields: the form fields before the file, names lower-cased.
        bucket: the bucket of the URL (the value of ``$bucket``).
        signature_version: 2 exempts ``AWSAccessKeyId`` and ``signature``.

    Raises:
        S3Error: ``AccessDenied`` ("Invalid according to Policy: ...").
    """
    covered: set[str] = set()
    for condition in policy.conditions:
        if condition.operator == "content-length-range":
            continue
        covered.add(condition.field)
        value = bucket if condition.field == "bucket" else fields.get(condition.field, "")
        if not condition.holds(value):
            raise policy_denied(f"Policy Condition failed: {condition.text}")
    exempt = EXEMPT_FIELDS | (EXEMPT_FIELDS_V2 if signature_version == 2 else frozenset())
    extra = sorted(
        name
        for name in fields
        if name not in covered and name not in exempt and not name.startswith("x-ignore-")
    )
    if extra:
        raise policy_denied(f"Extra input fields: {', '.join(extra)}")


__all__ = [
    "EXEMPT_FIELDS",
    "Condition",
    "FormAuth",
    "PostPolicy",
    "authenticate_form",
    "check_conditions",
    "claimed_access_key",
    "decode_policy",
    "policy_denied",
]
