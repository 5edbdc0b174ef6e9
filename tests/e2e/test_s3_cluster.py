"""boto3 against the S3 endpoint on a real in-process cluster (not the in-memory fake).

The endpoint is the same one :mod:`tests.e2e.test_s3_boto3` drives, but its block store is a
:class:`~storage.kv_client.KVClient` on node 0 of real nodes (secure RPC on loopback, overlay,
silos with fsync, block services): every object lands as encrypted chunks replicated three
times and every bucket index change is a CASPaxos round. A representative subset of the
operations runs here; the last test stops a storage node in the middle of a multipart upload.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from botocore.exceptions import ClientError  # type: ignore[import-untyped, unused-ignore]

from storage.kv_client import KVClient
from storage.policy import Redundancy
from tests.e2e.conftest import ClusterS3Server, running_cluster_s3, url_path
from tests.e2e.s3_bodies import md5_hex, read_body

MiB = 1024 * 1024
_names = iter(range(1_000_000))


def _code(info: pytest.ExceptionInfo[ClientError]) -> str:
    return str(info.value.response["Error"]["Code"])


def _multipart_etag(parts: list[bytes]) -> str:
    """The ETag S3 gives a completed multipart upload: MD5 of the part MD5s, dash, count."""
    digests = b"".join(hashlib.md5(p, usedforsecurity=False).digest() for p in parts)
    return f'"{md5_hex(digests)}-{len(parts)}"'


def _empty_and_delete(s3: Any, name: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
    for upload in s3.list_multipart_uploads(Bucket=name).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    s3.delete_bucket(Bucket=name)


@pytest.fixture(scope="module")
def s3c(cluster_s3: ClusterS3Server) -> Any:
    """A path-style boto3 client on the cluster's endpoint."""
    return cluster_s3.server.client(s3={"addressing_style": "path"})


@pytest.fixture
def cbucket(s3c: Any) -> Iterator[str]:
    """A fresh bucket on the cluster; emptied and deleted after the test."""
    name = f"cluster-{next(_names)}-{threading.get_ident() % 10000}"
    s3c.create_bucket(Bucket=name)
    yield name
    _empty_and_delete(s3c, name)


def test_runs_on_real_nodes(cluster_s3: ClusterS3Server) -> None:
    """The endpoint's store is the networked client, with every node up."""
    assert isinstance(cluster_s3.server.store, KVClient)
    assert cluster_s3.running_nodes() == 4


def test_bucket_lifecycle(s3c: Any) -> None:
    name = f"cluster-life-{next(_names)}"
    s3c.create_bucket(Bucket=name)
    assert s3c.head_bucket(Bucket=name)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert name in [b["Name"] for b in s3c.list_buckets()["Buckets"]]
    with pytest.raises(ClientError) as info:
        s3c.create_bucket(Bucket=name)
    assert _code(info) == "BucketAlreadyOwnedByYou"
    s3c.put_object(Bucket=name, Key="k", Body=b"x")
    with pytest.raises(ClientError) as info:
        s3c.delete_bucket(Bucket=name)
    assert _code(info) == "BucketNotEmpty"
    s3c.delete_object(Bucket=name, Key="k")
    s3c.delete_bucket(Bucket=name)
    assert name not in [b["Name"] for b in s3c.list_buckets()["Buckets"]]
    with pytest.raises(ClientError) as info:
        s3c.head_bucket(Bucket=name)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_put_get_head_delete_with_metadata(s3c: Any, cbucket: str) -> None:
    # 9 MiB + 3: three 4 MiB chunks, the last one short.
    body = random.Random(1).randbytes(9 * MiB + 3)
    put = s3c.put_object(
        Bucket=cbucket,
        Key="dir/big object.bin",
        Body=body,
        ContentType="application/x-test",
        Metadata={"colour": "blue", "owner": "ballast"},
        CacheControl="no-cache",
    )
    assert put["ETag"] == f'"{md5_hex(body)}"'
    head = s3c.head_object(Bucket=cbucket, Key="dir/big object.bin")
    assert head["ContentLength"] == len(body)
    assert head["ContentType"] == "application/x-test"
    assert head["Metadata"] == {"colour": "blue", "owner": "ballast"}
    assert head["CacheControl"] == "no-cache"
    assert head["ETag"] == put["ETag"]
    got = s3c.get_object(Bucket=cbucket, Key="dir/big object.bin")
    assert got["Metadata"] == {"colour": "blue", "owner": "ballast"}
    assert read_body(got) == body
    s3c.put_object(Bucket=cbucket, Key="empty", Body=b"")
    assert read_body(s3c.get_object(Bucket=cbucket, Key="empty")) == b""
    s3c.delete_object(Bucket=cbucket, Key="dir/big object.bin")
    with pytest.raises(ClientError) as info:
        s3c.get_object(Bucket=cbucket, Key="dir/big object.bin")
    assert _code(info) == "NoSuchKey"


def test_ranged_get(s3c: Any, cbucket: str) -> None:
    body = random.Random(2).randbytes(9 * MiB)
    s3c.put_object(Bucket=cbucket, Key="r", Body=body)
    # Across the first chunk boundary, a suffix, an open end and one byte.
    for header, expected in (
        (f"bytes={4 * MiB - 10}-{4 * MiB + 9}", body[4 * MiB - 10 : 4 * MiB + 10]),
        ("bytes=-1000", body[-1000:]),
        (f"bytes={8 * MiB}-", body[8 * MiB :]),
        ("bytes=0-0", body[:1]),
    ):
        response = s3c.get_object(Bucket=cbucket, Key="r", Range=header)
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert read_body(response) == expected, header
    with pytest.raises(ClientError) as info:
        s3c.get_object(Bucket=cbucket, Key="r", Range=f"bytes={len(body)}-")
    assert _code(info) == "InvalidRange"


def test_conditional_put(s3c: Any, cbucket: str) -> None:
    first = s3c.put_object(Bucket=cbucket, Key="c", Body=b"one", IfNoneMatch="*")
    with pytest.raises(ClientError) as info:
        s3c.put_object(Bucket=cbucket, Key="c", Body=b"two", IfNoneMatch="*")
    assert _code(info) == "PreconditionFailed"
    with pytest.raises(ClientError) as info:
        s3c.put_object(Bucket=cbucket, Key="c", Body=b"two", IfMatch='"0123456789abcdef"')
    assert _code(info) == "PreconditionFailed"
    s3c.put_object(Bucket=cbucket, Key="c", Body=b"three", IfMatch=first["ETag"])
    assert read_body(s3c.get_object(Bucket=cbucket, Key="c")) == b"three"


def test_copy_object(s3c: Any, cbucket: str) -> None:
    body = random.Random(3).randbytes(5 * MiB + 1)
    s3c.put_object(Bucket=cbucket, Key="src", Body=body, Metadata={"a": "1"})
    s3c.copy_object(Bucket=cbucket, Key="dst", CopySource={"Bucket": cbucket, "Key": "src"})
    copied = s3c.get_object(Bucket=cbucket, Key="dst")
    assert copied["Metadata"] == {"a": "1"}
    assert read_body(copied) == body
    s3c.copy_object(
        Bucket=cbucket,
        Key="dst2",
        CopySource={"Bucket": cbucket, "Key": "src"},
        MetadataDirective="REPLACE",
        Metadata={"b": "2"},
    )
    assert s3c.head_object(Bucket=cbucket, Key="dst2")["Metadata"] == {"b": "2"}
    # The copy owns its data: deleting the source leaves it whole.
    s3c.delete_object(Bucket=cbucket, Key="src")
    assert read_body(s3c.get_object(Bucket=cbucket, Key="dst")) == body


def test_list_v2_with_delimiter(s3c: Any, cbucket: str) -> None:
    keys = ["a/1", "a/2", "a/b/3", "b/4", "c", "d/5"]
    for key in keys:
        s3c.put_object(Bucket=cbucket, Key=key, Body=key.encode())
    top = s3c.list_objects_v2(Bucket=cbucket, Delimiter="/")
    assert [o["Key"] for o in top.get("Contents", [])] == ["c"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/", "b/", "d/"]
    inner = s3c.list_objects_v2(Bucket=cbucket, Delimiter="/", Prefix="a/")
    assert [o["Key"] for o in inner["Contents"]] == ["a/1", "a/2"]
    assert [p["Prefix"] for p in inner["CommonPrefixes"]] == ["a/b/"]
    # Paging two at a time with continuation tokens gives every key once, in order.
    pages = s3c.get_paginator("list_objects_v2").paginate(
        Bucket=cbucket, PaginationConfig={"PageSize": 2}
    )
    listed = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert listed == sorted(keys)


def test_multipart_three_parts(s3c: Any, cbucket: str) -> None:
    rng = random.Random(4)
    parts = [rng.randbytes(5 * MiB), rng.randbytes(5 * MiB + 123), rng.randbytes(777)]
    upload = s3c.create_multipart_upload(Bucket=cbucket, Key="mp", Metadata={"m": "p"})
    upload_id = upload["UploadId"]
    done = []
    for number, data in enumerate(parts, start=1):
        part = s3c.upload_part(
            Bucket=cbucket, Key="mp", UploadId=upload_id, PartNumber=number, Body=data
        )
        assert part["ETag"] == f'"{md5_hex(data)}"'
        done.append({"PartNumber": number, "ETag": part["ETag"]})
    listed = s3c.list_parts(Bucket=cbucket, Key="mp", UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in listed] == [
        (i, len(d)) for i, d in enumerate(parts, start=1)
    ]
    complete = s3c.complete_multipart_upload(
        Bucket=cbucket, Key="mp", UploadId=upload_id, MultipartUpload={"Parts": done}
    )
    assert complete["ETag"] == _multipart_etag(parts)
    got = s3c.get_object(Bucket=cbucket, Key="mp")
    assert got["ETag"] == _multipart_etag(parts)
    assert got["Metadata"] == {"m": "p"}
    assert read_body(got) == b"".join(parts)
    assert s3c.list_multipart_uploads(Bucket=cbucket).get("Uploads", []) == []


def test_presigned_url(cluster_s3: ClusterS3Server, s3c: Any, cbucket: str) -> None:
    server = cluster_s3.server
    s3c.put_object(Bucket=cbucket, Key="shared file", Body=b"presigned data")
    url = s3c.generate_presigned_url(
        "get_object", Params={"Bucket": cbucket, "Key": "shared file"}, ExpiresIn=60
    )
    status, _, body = server.request("GET", url_path(url), sign=False)
    assert (status, body) == (200, b"presigned data")
    put_url = s3c.generate_presigned_url(
        "put_object", Params={"Bucket": cbucket, "Key": "via url"}, ExpiresIn=60
    )
    status, _, _ = server.request("PUT", url_path(put_url), body=b"uploaded", sign=False)
    assert status == 200
    assert read_body(s3c.get_object(Bucket=cbucket, Key="via url")) == b"uploaded"
    status, _, body = server.request("PUT", url_path(put_url).replace("via", "vie"), sign=False)
    assert status == 403
    assert b"SignatureDoesNotMatch" in body


def _failed_copies(running: ClusterS3Server) -> int:
    """Chunk copies the gateway's client could not place (the stopped node's)."""

    async def failed() -> int:
        store = running.server.store
        assert isinstance(store, KVClient)
        return store.statistics().copies_failed

    return running.server.run(failed)


@pytest.mark.parametrize("nodes", [3, 4])
def test_node_killed_during_multipart_upload(tmp_path: Path, nodes: int) -> None:
    """A storage node stops between parts: the upload completes and reads back intact.

    With three nodes and ``replicas=3`` the stopped node holds a replica of every chunk and
    register, so every later write and read must get by on the remaining majority; with
    four, placement also has a spare to write to.
    """
    rng = random.Random(5 + nodes)
    parts = [rng.randbytes(5 * MiB + 1), rng.randbytes(5 * MiB + 2), rng.randbytes(3 * MiB + 3)]
    with running_cluster_s3(tmp_path / "cluster", nodes=nodes) as running:
        s3 = running.server.client(s3={"addressing_style": "path"})
        s3.create_bucket(Bucket="survivor")
        upload_id = s3.create_multipart_upload(Bucket="survivor", Key="big.bin")["UploadId"]
        etags = []

        def upload(number: int) -> None:
            etag = s3.upload_part(
                Bucket="survivor",
                Key="big.bin",
                UploadId=upload_id,
                PartNumber=number,
                Body=parts[number - 1],
            )["ETag"]
            etags.append({"PartNumber": number, "ETag": etag})

        upload(1)
        victim = nodes - 1
        running.stop_node(victim)
        assert running.running_nodes() == nodes - 1
        upload(2)
        upload(3)
        complete = s3.complete_multipart_upload(
            Bucket="survivor",
            Key="big.bin",
            UploadId=upload_id,
            MultipartUpload={"Parts": etags},
        )
        assert complete["ETag"] == _multipart_etag(parts)
        if nodes == 3:
            # Every chunk had a replica on the stopped node: those copies failed, the
            # writes returned on the majority.
            assert _failed_copies(running) > 0
        whole = b"".join(parts)
        got = s3.get_object(Bucket="survivor", Key="big.bin")
        assert got["ContentLength"] == len(whole)
        data = read_body(got)
        assert hashlib.sha256(data).digest() == hashlib.sha256(whole).digest()
        assert data == whole
        # The stopped node comes back with its old data: everything still reads the same.
        running.restart_node(victim)
        assert read_body(s3.get_object(Bucket="survivor", Key="big.bin")) == whole
        _empty_and_delete(s3, "survivor")


#: Nodes of the erasure-coding cluster: one per fragment of a 4+2 chunk.
EC_NODES = 6
EC_POLICY = Redundancy(data=4, parity=2)


def test_multipart_upload_in_erasure_coded_bucket(tmp_path: Path) -> None:
    """A bucket created 4+2 (``x-ballast-redundancy``) on six real nodes: a multipart upload
    completes, every chunk of it is six fragments 0..5 on six distinct nodes (no whole
    copy anywhere), and the object reads back bit-exact, whole and across a part boundary.
    """
    rng = random.Random(6)
    parts = [rng.randbytes(5 * MiB + 1), rng.randbytes(5 * MiB + 2), rng.randbytes(777)]
    whole = b"".join(parts)
    with running_cluster_s3(tmp_path / "cluster", nodes=EC_NODES) as running:
        s3 = running.server.client(s3={"addressing_style": "path"})

        def erasure_coded(request: Any, **_: Any) -> None:
            request.headers["x-ballast-redundancy"] = str(EC_POLICY)

        s3.meta.events.register("before-sign.s3.CreateBucket", erasure_coded)
        s3.create_bucket(Bucket="ec-bucket")
        head = s3.head_bucket(Bucket="ec-bucket")
        assert head["ResponseMetadata"]["HTTPHeaders"]["x-ballast-redundancy"] == "4+2"
        upload_id = s3.create_multipart_upload(Bucket="ec-bucket", Key="mp.bin")["UploadId"]
        done = []
        for number, data in enumerate(parts, start=1):
            part = s3.upload_part(
                Bucket="ec-bucket", Key="mp.bin", UploadId=upload_id, PartNumber=number, Body=data
            )
            assert part["ETag"] == f'"{md5_hex(data)}"'
            done.append({"PartNumber": number, "ETag": part["ETag"]})
        complete = s3.complete_multipart_upload(
            Bucket="ec-bucket", Key="mp.bin", UploadId=upload_id, MultipartUpload={"Parts": done}
        )
        assert complete["ETag"] == _multipart_etag(parts)
        got = s3.get_object(Bucket="ec-bucket", Key="mp.bin")
        assert got["ContentLength"] == len(whole)
        data = read_body(got)
        assert hashlib.sha256(data).digest() == hashlib.sha256(whole).digest()
        boundary = len(parts[0])
        ranged = s3.get_object(
            Bucket="ec-bucket", Key="mp.bin", Range=f"bytes={boundary - 100}-{boundary + 99}"
        )
        assert read_body(ranged) == whole[boundary - 100 : boundary + 100]

        layout = running.server.run(_fragment_layout, running, "ec-bucket", "mp.bin")
        # 5 MiB + x is one 4 MiB chunk and a short one; the last part is one chunk.
        assert len(layout) == 5
        for address, (policy, held) in layout.items():
            assert policy == EC_POLICY, address
            fragments = [f for per_node in held.values() for f in per_node]
            assert None not in fragments, (address, held)  # no whole copy anywhere
            assert sorted(f for f in fragments if f is not None) == list(range(6)), (address, held)
            assert all(len(per_node) == 1 for per_node in held.values()), (address, held)
            assert len(held) == EC_NODES, (address, held)
        _empty_and_delete(s3, "ec-bucket")


async def _fragment_layout(
    running: ClusterS3Server, bucket: str, key: str
) -> dict[str, tuple[Redundancy, dict[int, list[int | None]]]]:
    """For each chunk of the object: its reference's policy, and node index -> keys held
    (fragment numbers, ``None`` for a whole copy), once the gateway's stragglers are done."""
    store = running.server.store
    assert isinstance(store, KVClient)
    reader = await running.server.objects.open_object(bucket, key)
    refs = [c.ref for c in await reader.chunks()]
    if reader.record.chunk_list is not None:
        refs.append(reader.record.chunk_list.ref)
    # Writes return at k+1 fragments; the last one may still be on its way.
    with trio.fail_after(30):
        while store.statistics().background_tasks:  # noqa: ASYNC110 - no event to wait on
            await trio.sleep(0.05)
    layout: dict[str, tuple[Redundancy, dict[int, list[int | None]]]] = {
        ref.address.hex(): (ref.redundancy, {}) for ref in refs
    }
    for node in running.cluster.nodes:
        assert node.silo is not None
        holdings = await node.silo.holdings([ref.address for ref in refs])
        for address, held in holdings.items():
            layout[address.hex()][1][node.index] = held
    return layout
