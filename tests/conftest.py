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
#: The scene of the tiled and Zarr output tests: 602 x 1034 px at x2, so blocks and chunks of
#: 512 are ragged on the right and at the bottom (the edge cases of both layouts).
RAGGED_HEIGHT, RAGGED_WIDTH = 301, 517


def bicubic_cfg(**kw):
    """The RunConfig of a small, fast run: bicubic x2, no captioner, 32 px tiles with 8 px of
    overlap, one tile per batch (many results, so commits and blocks come during the run); ``kw`` overrides."""
    from geosr.config import RunConfig, TileSpec  # here, not at the top: every test session imports conftest

    base = dict(scale=2, model="bicubic", captioner="none", tiles=TileSpec(32, 8), progress=False, batch_size=1)
    base.update(kw)
    return RunConfig(**base)


def file_tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, by relative name: its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def upscale_bicubic_cli(src: Path, out, *extra: str):
    """``geosr upscale SRC OUT`` through the CLI at :func:`bicubic_cfg`'s settings, quiet."""
    from click.testing import CliRunner

    from geosr.cli import cli

    return CliRunner().invoke(cli, ["upscale", str(src), str(out), "--scale", "2", "--model", "bicubic", "--captioner",
                                    "none", "--tile", "32", "--overlap", "8", "-q", *extra])


def _disk_full_when(monkeypatch, folder: Path, output: str, full) -> object:
    """Make the work raster's writes fail (a full disk) once ``full(journal bytes)`` holds for the
    journal of the run writing ``folder / output``; returns the real ``WorkRaster._write_rows``."""
    from geosr.errors import WriteError
    from geosr.writer import WorkRaster

    real_rows = WorkRaster._write_rows

    def rows_or_full(self, *args):
        if any(full(j.read_bytes()) for j in folder.glob(f".{output}.geosr-run-*/journal.jsonl")):
            raise WriteError("no space left (test)")
        return real_rows(self, *args)

    monkeypatch.setattr(WorkRaster, "_write_rows", rows_or_full)
    return real_rows


def disk_full_once_a_block_is_journalled(monkeypatch, folder: Path, output: str):
    """Make the work raster's writes fail (a full disk) as soon as a journal line names a finished
    block or chunk of the run writing ``folder / output``: the run stops with some blocks done.

    Returns the real ``WorkRaster._write_rows``, to put back before a resume.
    """
    return _disk_full_when(monkeypatch, folder, output, lambda journal: b'"blocks"' in journal)


def disk_full_after_commits(monkeypatch, folder: Path, output: str, commits: int = 2):
    """As :func:`disk_full_once_a_block_is_journalled`, once the journal has ``commits`` lines."""
    return _disk_full_when(monkeypatch, folder, output, lambda journal: len(journal.splitlines()) >= commits)


@pytest.fixture
def data_dir() -> Path:
    """Folder of the small real fixtures shipped with the tests."""
    return DATA


@pytest.fixture
def ragged_scene(tmp_path) -> Path:
    """A textured RGB uint8 scene of :data:`RAGGED_HEIGHT` x :data:`RAGGED_WIDTH` px, georeferenced."""
    from tests.rasters import uint8_scene

    return uint8_scene(tmp_path / "in.tif", RAGGED_HEIGHT, RAGGED_WIDTH)


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


@pytest.fixture(autouse=True)
def _own_digest_cache(tmp_path_factory, monkeypatch):
    """Each test's whole-file digests (geosr.digest_cache) in a cache of its own, not the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
