"""A real S3-compatible server (moto's ``moto_server``) on loopback for the tests that need one.

``s3_server`` (once per session, so once per xdist worker) starts ``moto_server`` from the
virtualenv as a separate process on a free loopback port and stops it at the end of the session.
``s3_bucket`` (per test) creates a bucket of the test's own and points the standard AWS variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``) at
the server for the test's duration: s3fs (through botocore) reads them, and notebook kernels and
other child processes inherit them, exactly as a deployment configures a real S3 endpoint
(docs/scaling-guide.md). The bucket and everything in it is deleted after the test.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from chroma_server import _listening_port, stop_server

REGION = "us-east-1"
# moto accepts any credentials; these only have to be present, as they must be for a real endpoint.
ACCESS_KEY_ID = "opsbench-test"
SECRET_ACCESS_KEY = "opsbench-test-secret"
# Variables that would override the endpoint or the credentials above if the machine had them set.
_OVERRIDING_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    log_path: Path


@dataclass(frozen=True)
class S3Bucket:
    """One test's bucket on the loopback server, and the settings values that use it."""

    name: str
    endpoint_url: str

    @property
    def object_store_url(self) -> str:
        return f"s3://{self.name}/objects"

    @property
    def model_store_url(self) -> str:
        return f"s3://{self.name}/models"

    @property
    def env(self) -> dict[str, str]:
        """The AWS variables the storage layer reads: for a child process given an explicit
        environment (one that inherits ``os.environ`` has them already while the test runs)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self) -> Any:
        """A boto3 S3 client on the server, independent of the code under test (to check what the
        bucket really holds, or to change it behind the store's back)."""
        import boto3  # type: ignore[import-untyped]  # no stubs installed

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            region_name=REGION,
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every key in the bucket under ``prefix``, as the server lists them."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def _answers_s3(endpoint_url: str) -> bool:
    """True once the server answers S3's ListBuckets (``GET /``) with S3's XML: another program
    listening on that port cannot pass for it."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    try:
        with direct.open(f"{endpoint_url}/", timeout=5) as response:
            return response.status == 200 and b"ListAllMyBucketsResult" in response.read()
    except (OSError, http.client.HTTPException):  # refused, reset, not HTTP
        return False


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """``moto_server`` on loopback, port 0: the server binds a free port itself (read from its own
    listening socket, as for ``chroma run``); ready once it answers S3's ListBuckets there."""
    host = "127.0.0.1"
    log_path = tmp_path_factory.mktemp("s3-server") / "moto_server.log"
    command = [str(Path(sys.executable).parent / "moto_server"), "--host", host, "--port", "0"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        port: int | None = None
        deadline = time.monotonic() + 60
        while port is None or not _answers_s3(f"http://{host}:{port}"):
            if proc.poll() is not None:
                pytest.fail(
                    f"moto_server exited with {proc.returncode}: {log_path.read_text(errors='replace')[-2000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"moto_server not ready in 60 s (port {port}): {log_path.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.2)
            port = port or _listening_port(proc.pid, host)
        yield S3Server(endpoint_url=f"http://{host}:{port}", log_path=log_path)
    finally:
        stop_server(proc)


def _forget_s3_filesystems() -> None:
    """fsspec keeps one S3FileSystem per set of arguments, built with the environment of its day:
    a test must get one built with its own."""
    import s3fs  # type: ignore[import-untyped]

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Bucket]:
    """A fresh bucket (a unique name) on the session's server, with the AWS variables pointing at
    it for this test; deleted with its objects afterwards."""
    bucket = S3Bucket(name=f"opsbench-{uuid.uuid4().hex[:20]}", endpoint_url=s3_server.endpoint_url)
    for name in _OVERRIDING_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in bucket.env.items():
        monkeypatch.setenv(name, value)
    for name in ("NO_PROXY", "no_proxy"):  # a machine-wide proxy must not carry loopback traffic
        monkeypatch.setenv(name, ",".join(filter(None, [os.environ.get(name), "127.0.0.1", "localhost"])))
    _forget_s3_filesystems()
    client = bucket.client()
    client.create_bucket(Bucket=bucket.name)
    try:
        yield bucket
    finally:
        _forget_s3_filesystems()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket.name):
            objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if objects:
                client.delete_objects(Bucket=bucket.name, Delete={"Objects": objects})
        client.delete_bucket(Bucket=bucket.name)
