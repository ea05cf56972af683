"""Shared fixtures. No test may reach a model hub."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("GDAL_CACHEMAX", "256")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

DATA = Path(__file__).parent / "data"
BUCKET = "scenes"  # the bucket of the s3 fixture


@pytest.fixture
def data_dir() -> Path:
    """Folder of the small real fixtures shipped with the tests."""
    return DATA


@pytest.fixture(scope="module")
def server():
    """An S3-compatible server on localhost: moto's (the test extra), shared by the object-storage tests.

    moto's server runs in a process of its own: in this process (ThreadedMotoServer) it would
    need the GIL that a thread blocked in a GDAL read of it may hold, and the lazy API's reads hang.
    """
    pytest.importorskip("moto", reason="the test extra installs moto[server]")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3(server, monkeypatch):
    """A boto3 client of a fresh bucket; GDAL and geosr see the same server through the environment."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
        "AWS_S3_ENDPOINT": server, "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "CPL_VSIL_CURL_NON_CACHED": f"/vsis3/{BUCKET}",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    boto3 = pytest.importorskip("boto3")
    client = boto3.client("s3", endpoint_url=f"http://{server}", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    yield client
    for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
