"""PostObject: what a form may set only through fields its policy covers, and metadata
names that could never be header names."""

from __future__ import annotations

from tests.e2e.test_s3_hostile import _call_without_body
from tests.s3_forms import encode_form, form_server, signed_fields


async def test_file_part_content_type_is_not_a_policy_bypass() -> None:
    """The policy names no Content-Type, so the uploader may not choose one: a
    ``Content-Type`` form field would be refused ("Extra input fields"). The same value sent
    as the file part's own ``Content-Type`` header is not checked against the policy at all,
    yet it is stored and served as the object's Content-Type (text/html on the bucket's
    origin: stored XSS through a policy meant for, say, avatars)."""
    server = await form_server()
    auth = (server.access_key, server.secret)
    fields = signed_fields(*auth, [{"key": "avatar"}], fields=[("key", "avatar")])
    # As a field: refused, as the policy does not name it.
    with_field = encode_form([("Content-Type", "text/html"), *fields], b"<script>1</script>")
    status, _, _ = await server.post(with_field)
    assert status == 403
    # As the file part's header: accepted, and stored.
    body = encode_form(fields, b"<script>alert(document.cookie)</script>", file_type="text/html")
    status, _, _ = await server.post(body)
    assert status == 204
    info = await server.objects.head_object("forms", "avatar")
    assert info.content_type is None  # served as binary/octet-stream


async def test_metadata_names_that_are_no_header_names_are_refused_or_readable() -> None:
    """A form field name may hold any UTF-8 text; as ``x-amz-meta-NAME`` it would become a
    response header name on every GET and HEAD, which it cannot be (header names are
    tokens, as PutObject's always are). Such a form is refused and stores nothing; a valid
    metadata name is stored and read back."""
    server = await form_server()
    auth = (server.access_key, server.secret)
    name = "x-amz-meta-\u20ac"
    fields = signed_fields(
        *auth,
        [{"key": "k"}, {"acl": "public-read"}, ["starts-with", f"${name}", ""]],
        fields=[("key", "k"), ("acl", "public-read"), (name, "v")],
    )
    status, _, _ = await server.post(encode_form(fields, b"x"))
    assert status == 400
    assert await server.read("k") is None
    ok = signed_fields(
        *auth,
        [{"key": "k"}, {"acl": "public-read"}, ["starts-with", "$x-amz-meta-color", ""]],
        fields=[("key", "k"), ("acl", "public-read"), ("x-amz-meta-color", "blue")],
    )
    status, _, _ = await server.post(encode_form(ok, b"x"))
    assert status == 204
    sent = await _call_without_body(server.app, "GET", "/forms/k", [("host", "127.0.0.1")])
    assert sent[0].get("status") == 200
    assert (b"x-amz-meta-color", b"blue") in list(sent[0]["headers"])
