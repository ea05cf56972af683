"""Inputs in object storage: ``s3://bucket/key.tif``, ``/vsis3/...``, ``https://.../cog.tif``, ``/vsicurl/...``.

GDAL reads them itself (rasterio turns ``s3://`` into ``/vsis3/`` and ``https://`` into
``/vsicurl/``) with the usual AWS environment: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE`` (``~/.aws``), and for a server other than AWS
``AWS_S3_ENDPOINT``, ``AWS_HTTPS=NO``, ``AWS_VIRTUAL_HOSTING=FALSE``. What GDAL cannot give a
Python caller without the GDAL bindings - an object's size, version and a few byte ranges,
for a run's identity (:mod:`geosr.resumable`) - comes from boto3 for S3 (the ``s3`` extra)
and from plain HTTP ``HEAD`` and ``Range`` requests for URLs. boto3 is configured from the
same variables as GDAL (``AWS_ENDPOINT_URL`` too), so both see the same server.
"""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
from dataclasses import dataclass
from functools import cache

from geosr.errors import InputError

__all__ = ["RemoteObject", "gdal_path", "is_remote", "remote_object"]

_S3_PREFIXES = ("s3://", "/vsis3/")
_HTTP_PREFIXES = ("http://", "https://", "/vsicurl/")


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an object in S3 or behind a URL rather than a local file."""
    text = os.fspath(path)
    return isinstance(text, str) and text.startswith(_S3_PREFIXES + _HTTP_PREFIXES)


def gdal_path(path: str) -> str:
    """The name GDAL opens ``path`` by: ``s3://b/k`` -> ``/vsis3/b/k``, a URL -> ``/vsicurl/URL``."""
    if path.startswith("s3://"):
        return "/vsis3/" + path[len("s3://"):]
    if path.startswith(("http://", "https://")):
        return "/vsicurl/" + path
    return path


def _split_s3(path: str) -> tuple[str, str]:
    rest = path[len("s3://"):] if path.startswith("s3://") else path[len("/vsis3/"):]
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise InputError(f"{path!r} names no object: give s3://bucket/key.tif")
    return bucket, key


def _off(value: str | None) -> bool:
    return (value or "").strip().upper() in ("NO", "FALSE", "OFF", "0")


@cache
def _s3_client(endpoint: str | None, region: str | None, path_style: bool):
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # pragma: no cover - the s3 extra is missing
        raise InputError("reading s3:// inputs needs boto3: pip install 'geosr[s3]'") from exc
    config = Config(s3={"addressing_style": "path"} if path_style else {}, retries={"max_attempts": 5})
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)


def s3_client():
    """A boto3 S3 client for the server GDAL uses: ``AWS_ENDPOINT_URL(_S3)``, else GDAL's
    ``AWS_S3_ENDPOINT`` (``http://`` when ``AWS_HTTPS=NO``), else AWS."""
    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if not endpoint and env.get("AWS_S3_ENDPOINT"):
        endpoint = env["AWS_S3_ENDPOINT"]
        if "://" not in endpoint:
            endpoint = ("http://" if _off(env.get("AWS_HTTPS")) else "https://") + endpoint
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or ("us-east-1" if endpoint else None)
    path_style = _off(env.get("AWS_VIRTUAL_HOSTING")) or bool(endpoint)
    # cached per configuration: tests and users may change the environment between runs
    return _s3_client(endpoint, region, path_style)


def _url(path: str) -> str:
    return path.removeprefix("/vsicurl/")


@dataclass(frozen=True)
class RemoteObject:
    """An object in S3 or behind a URL: its size and version, and byte ranges of it."""

    path: str
    size: int
    version: str  # ETag and last-modified time, as the server reports them

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer at the end of the object)."""
        if length <= 0 or offset >= self.size:
            return b""
        last = min(self.size, offset + length) - 1
        try:
            if self.path.startswith(_S3_PREFIXES):
                bucket, key = _split_s3(self.path)
                return s3_client().get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-{last}")["Body"].read()
            request = urllib.request.Request(_url(self.path), headers={"Range": f"bytes={offset}-{last}"})
            with urllib.request.urlopen(request, timeout=60) as response:
                data = response.read()
                # a server that ignores Range sends the whole object
                return data if response.status == 206 else data[offset:last + 1]
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"cannot read {self.path}: {exc}") from exc


def remote_object(path: str) -> RemoteObject:
    """Size and version of the object at ``path`` (``s3://``, ``/vsis3/``, ``http(s)://``, ``/vsicurl/``).

    Raises
    ------
    InputError
        The object does not exist or cannot be reached.
    """
    try:
        if path.startswith(_S3_PREFIXES):
            bucket, key = _split_s3(path)
            head = s3_client().head_object(Bucket=bucket, Key=key)
            modified = head.get("LastModified")
            return RemoteObject(path, int(head["ContentLength"]),
                                f"ETag {head.get('ETag', '').strip(chr(34))}, modified {modified.isoformat() if modified else '?'}")
        request = urllib.request.Request(_url(path), method="HEAD")
        with urllib.request.urlopen(request, timeout=60) as response:
            headers = response.headers
            return RemoteObject(path, int(headers.get("Content-Length", 0)),
                                f"ETag {headers.get('ETag', '?').strip(chr(34))}, modified {headers.get('Last-Modified', '?')}")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot reach input {path}: {exc}") from exc
