"""OUTPUT in S3: ``s3://bucket/key.tif``, ``s3://bucket/prefix/`` (tiled) or ``s3://bucket/key.zarr``.

A run cannot write its work raster, journal and blocks into S3 (no ``pwrite``, no
``fsync``, no rename), so it runs exactly as a local run does, on a local stand-in of
OUTPUT: the same path under a local folder, :func:`work_root` ``/ bucket / key``. Its lock
and work folder lie beside that stand-in, so ``--resume`` after a kill finds them as it
finds a local run's. At the commit the local target assembles its files at the stand-in
(:class:`~geosr.writer.OutputTarget`, :class:`~geosr.tiled_output.TiledTarget` or
:class:`~geosr.zarr_output.ZarrTarget`, unchanged) and :class:`S3Upload` uploads them with
boto3, then deletes the local copies.

Why no temporary key: S3 makes an object visible only once its ``PutObject`` or
``CompleteMultipartUpload`` succeeds, whole; a killed or failed upload leaves nothing at
the key (at most parts of an unfinished multipart upload, invisible, which a bucket's
``AbortIncompleteMultipartUpload`` lifecycle rule removes). Uploading to a temporary key and
copying it would add a second full-size copy and nothing safer. The main object goes last
(the COG after its captions; the VRT, ``collection.json`` and Zarr's ``.zgroup`` /
``.zmetadata`` after the data), so a reader that finds it finds the rest. A run that fails
during the upload deletes the objects it had uploaded unless it was replacing (--overwrite).

Credentials and server: those of :func:`geosr.remote.s3_client` (boto3's default chain:
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles; the
endpoint from ``AWS_ENDPOINT_URL`` or GDAL's ``AWS_S3_ENDPOINT``).

Not locked across machines: the lock is local, so two machines writing the same URL race.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from geosr.errors import OutputError, OutputExistsError, WriteError
from geosr.remote import s3_client
from geosr.replaceable import TILED_MARK, ZARR_MARK, check_entries, foreign_entry
from geosr.tiled_output import TiledTarget
from geosr.writer import OutputTarget, sidecar_path
from geosr.zarr_output import ZarrTarget, is_zarr_output

__all__ = ["S3CogTarget", "S3TiledTarget", "S3Upload", "S3ZarrTarget", "is_s3_output", "s3_target", "work_root"]

#: Files uploaded after everything else: the ones whose presence says the output is complete.
_LAST = ("mosaic.vrt", "collection.json", ".zgroup", ".zmetadata")
_LAST_ZARR = ".zmetadata"  # a store's consolidated metadata: uploaded last, there when it is whole
_CONTENT_TYPES = {
    ".tif": "image/tiff; application=geotiff; profile=cloud-optimized",
    ".json": "application/json",
    ".geojson": "application/geo+json",
    ".vrt": "application/xml",
}
_UPLOAD_THREADS = 16  # Zarr stores are thousands of small objects: latency, not bandwidth, bounds them


def is_s3_output(output: str | os.PathLike) -> bool:
    """Whether OUTPUT names S3 (``s3://`` or ``/vsis3/``)."""
    return os.fspath(output).startswith(("s3://", "/vsis3/"))


def work_root() -> Path:
    """The local folder that holds the stand-ins of S3 OUTPUTs and their work folders.

    ``GEOSR_S3_WORK_DIR`` when set (a disk with room for the work raster, or a filesystem the
    dask workers share), else ``$XDG_CACHE_HOME/geosr/s3`` (``~/.cache/geosr/s3``).
    """
    if os.environ.get("GEOSR_S3_WORK_DIR"):
        return Path(os.environ["GEOSR_S3_WORK_DIR"]).absolute()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).absolute() / "geosr" / "s3"


def _split(output: str) -> tuple[str, str]:
    rest = output.removeprefix("s3://").removeprefix("/vsis3/")
    bucket, _, key = rest.partition("/")
    if not bucket or not key.strip("/") or ".." in key.split("/"):
        raise OutputError(f"OUTPUT {output} names no object: give s3://bucket/key.tif, s3://bucket/prefix/ "
                          "or s3://bucket/key.zarr")
    return bucket, key


class S3Upload:
    """What an OUTPUT in S3 adds to its local target: the stand-in, the checks, the upload.

    Mixed into :class:`~geosr.writer.OutputTarget`, :class:`~geosr.tiled_output.TiledTarget`
    and :class:`~geosr.zarr_output.ZarrTarget` (:func:`s3_target` picks), so the engine treats
    it as the local kind it is; its ``output`` (and ``data``, ``vrt``, ``captions``) are the
    stand-in's, which the run's lock and work folder follow.

    Attributes
    ----------
    url : str
        OUTPUT as ``s3://bucket/key``.
    bucket : str
    root : Path
        The local folder of the bucket's stand-ins (``work_root() / bucket``).
    """

    url: str
    bucket: str
    root: Path
    _replace: bool
    _trees: list[Path]
    _sidecars: list[Path]
    #: Prefixes a killed upload left, taken over by ``--resume`` (:meth:`_check_objects`): their
    #: objects the new output does not have are deleted at the commit, as with ``--overwrite``.
    _killed_trees: frozenset[Path] = frozenset()

    def _stand_in(self, output: str | os.PathLike, overwrite: bool, inputs: Sequence[str | os.PathLike]) -> Path:
        """Check OUTPUT's name against the inputs; the local path the run writes to instead."""
        text = os.fspath(output)
        self.bucket, key = _split(text)
        self.url = f"s3://{self.bucket}/{key}"
        for path in inputs:
            if os.fspath(path).removeprefix("s3://").removeprefix("/vsis3/") == f"{self.bucket}/{key}":
                raise OutputError(f"output {self.url} is also an input: write to another object")
        self._replace = overwrite
        self.root = work_root() / self.bucket
        stand_in = self.root / key
        try:
            stand_in.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the local work folder {stand_in.parent} of {self.url}: "
                              f"{exc.strerror}; set GEOSR_S3_WORK_DIR to a writable folder") from exc
        return stand_in

    def _key(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def url_of(self, path: Path) -> str:
        """The object URL of a file at the stand-in (a run's report names objects, not local copies)."""
        return f"s3://{self.bucket}/{self._key(path)}"

    def _tops(self) -> set[Path]:
        """The local target's files and folders at the stand-in (sidecars, VRT and captions included)."""
        extra = (getattr(self, "vrt", None), getattr(self, "captions", None))  # tiled and Zarr outputs have them
        return {self.output, *self._sidecars, *self._trees, *(p for p in extra if p is not None)}

    def _final_files(self) -> tuple[list[Path], list[Path]]:
        """The files at the stand-in: (the data, the main ones to upload last)."""
        files = set()
        for top in self._tops():
            if top.is_dir():
                files |= {p for p in top.rglob("*") if p.is_file()}
            elif top.is_file():
                files.add(top)
        last = {p for p in files if p == self.output or p.name in _LAST}
        return sorted(files - last), sorted(last)

    def _check_objects(self) -> None:
        """Refuse objects already there (unless overwriting); reach the bucket before any work."""
        client = s3_client()
        keys = [self._key(p) for p in self._tops() if p not in self._trees]
        try:
            client.head_bucket(Bucket=self.bucket)  # a missing bucket's objects are "not found" too
            zarr = isinstance(self, ZarrTarget)
            for tree in self._trees:
                prefix = self._key(tree) + "/"
                found = client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=2).get("Contents", [])
                # the S3 console's "folder" object at the prefix (listed first) is no object of an output
                if any(o["Key"][len(prefix):].strip("/") for o in found):
                    # --resume after a killed upload: geosr's objects without the mark that goes last
                    # are that upload's, replaced by this one's (a finished output has the mark)
                    killed = self._resume and not self._exists(client, prefix + (_LAST_ZARR if zarr else TILED_MARK))
                    if not (self._replace or killed):
                        raise OutputExistsError(f"s3://{self.bucket}/{prefix} holds objects; "
                                                "pass --overwrite to replace them")
                    self._check_replaceable(client, tree)
                    if killed:
                        self._killed_trees |= {tree}
            # --resume: a sidecar a killed upload left is taken over - unless the output is whole (its
            # object that goes last is there: the COG, a prefix's Collection or consolidated metadata)
            whole = (any(self._exists(client, f"{self._key(t)}/{_LAST_ZARR if zarr else TILED_MARK}") for t in self._trees)
                     if self._trees else self._exists(client, self._key(self.output)))
            for key in sorted(keys):
                if self._exists(client, key) and not self._replace:
                    if self._resume and not whole and key != self._key(self.output):
                        continue
                    raise OutputExistsError(f"s3://{self.bucket}/{key} exists; pass --overwrite to replace it")
        except OutputError:
            raise
        except Exception as exc:
            raise OutputError(f"cannot reach the output bucket {self.bucket} of {self.url}: {exc}") from exc

    def _check_replaceable(self, client, tree: Path) -> None:
        """Refuse to replace a prefix holding objects geosr does not write there (the stale ones
        would be deleted): every key must be a name of geosr's layout, and the Collection or the
        store's ``.zattrs``, when there, geosr's; a prefix without them is what a killed upload
        leaves (they go last), accepted (:func:`geosr.replaceable.check_entries`). A "folder"
        object at the prefix itself (the S3 console's) is ignored."""
        prefix = self._key(tree) + "/"
        zarr = isinstance(self, ZarrTarget)
        names = self._names(client, prefix)
        mark = prefix + (ZARR_MARK if zarr else TILED_MARK)
        check_entries(f"s3://{self.bucket}/{prefix}", zarr,
                      [(name, "folder" if name.endswith("/") else "file") for name in names],
                      lambda: client.get_object(Bucket=self.bucket, Key=mark)["Body"].read(),
                      "delete {name}", unmarked=True)

    def _names(self, client, prefix: str) -> list[str]:
        """The names of the keys under ``prefix`` (the prefix cut off)."""
        names = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            names += [o["Key"][len(prefix):] for o in page.get("Contents", [])]
        return names

    def _recheck(self) -> None:
        """At the commit, before anything is assembled or uploaded: check the prefixes again, as
        the local targets check their folders (objects may have come there during the run).

        Raises
        ------
        OutputError
            A prefix now holds objects geosr did not write (or the bucket is out of reach);
            the run's work is kept for ``--resume``.
        """
        client = s3_client()
        try:
            for tree in self._trees:
                self._check_replaceable(client, tree)
        except OutputError:
            raise
        except Exception as exc:
            raise OutputError(f"cannot check what s3://{self.bucket}/{self._key(tree)}/ holds before "
                              f"writing {self.url}: {exc}") from exc

    def _exists(self, client, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def commit(self, *args, **kwargs) -> None:
        """Assemble the output at the stand-in (the local target's commit, same arguments), upload
        it, then delete the local copies.

        Raises
        ------
        OutputError
            A prefix holds objects geosr did not write, come since the run's start
            (:meth:`_recheck`); nothing was uploaded or deleted, and the work is kept.
        WriteError
            An upload failed; the objects this commit uploaded are deleted again unless it was
            replacing an output.
        """
        self._recheck()
        super().commit(*args, **kwargs)  # the local target's
        groups = self._final_files()
        client = s3_client()
        uploaded: list[str] = []
        try:
            for group in groups:
                with ThreadPoolExecutor(_UPLOAD_THREADS) as pool:
                    # the pool's exit waits for every upload: all that succeeded are in `uploaded`
                    list(pool.map(lambda p: uploaded.append(self._upload(client, p)), group))
            self._delete_stale(client, set(uploaded))
        except BaseException as exc:  # a stop (SIGTERM, Ctrl-C) too: no half output left in the bucket
            left = None
            if not self._replace:
                try:
                    self._delete(client, uploaded)
                except Exception as cleanup:  # the network that failed the upload may fail this too
                    left = cleanup
            error = exc if not isinstance(exc, Exception) else WriteError(f"cannot upload {self.url}: {exc}")
            if left is not None:  # say what is left in the bucket, never leave it unsaid
                error.__notes__ = [*getattr(error, "__notes__", []),
                                   f"the {len(uploaded)} object(s) uploaded so far could not all be deleted "
                                   f"({left}): delete them by hand, e.g. {', '.join(uploaded[:3])}"]
            if self._replace and uploaded:  # what readers find there is neither output
                error.__notes__ = [*getattr(error, "__notes__", []),
                                   f"{self.url} now holds some of the new objects beside the old ones: "
                                   "rerun with --resume --overwrite to finish replacing it"]
            if error is exc:
                raise
            raise error from exc
        finally:
            self._remove_local([p for group in groups for p in group])

    def _upload(self, client, path: Path) -> str:
        key = self._key(path)
        extra = {"ContentType": _CONTENT_TYPES[path.suffix]} if path.suffix in _CONTENT_TYPES else None
        client.upload_file(str(path), self.bucket, key, ExtraArgs=extra)
        return key

    def _delete_stale(self, client, uploaded: set[str]) -> None:
        """Under a replaced tiled or Zarr prefix (``--overwrite``, or one a killed upload left),
        delete the objects the new output does not have: only those named as geosr names its
        objects (:func:`geosr.replaceable.foreign_entry`), never one written there by another
        hand after the commit's check, nor a "folder" object. A killed upload's blocks of another
        grid were kept beside the new output's, exit 0."""
        zarr = isinstance(self, ZarrTarget)
        for tree in self._trees if self._replace else [t for t in self._trees if t in self._killed_trees]:
            prefix = self._key(tree) + "/"
            self._delete(client, [prefix + name for name in self._names(client, prefix)
                                  if prefix + name not in uploaded and name.strip("/") and not name.endswith("/")
                                  and not foreign_entry(name, zarr)])

    def _delete(self, client, keys: Sequence[str]) -> None:
        """Delete ``keys``.

        Raises
        ------
        WriteError
            Some were not deleted: DeleteObjects answers 200 and lists them (a role without
            s3:DeleteObject), which boto3 does not raise for.
        """
        failed = []
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys at most
            answer = client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True})
            failed += [f"{e.get('Key')} ({e.get('Code')}: {e.get('Message')})" for e in answer.get("Errors", [])]
        if failed:
            raise WriteError(f"cannot delete {len(failed)} object(s) of s3://{self.bucket}: {'; '.join(failed[:3])}"
                             + (" ..." if len(failed) > 3 else ""))

    def _remove_local(self, files: Sequence[Path]) -> None:
        for tree in self._trees:
            shutil.rmtree(tree, ignore_errors=True)
        for path in files:
            path.unlink(missing_ok=True)


class S3CogTarget(S3Upload, OutputTarget):
    """A single COG (and its sidecars) at ``s3://bucket/key.tif``."""

    def __init__(self, output: str, overwrite: bool = False, inputs: Sequence[str | os.PathLike] = (),
                 sidecars: Sequence[str] = (), resume: bool = False) -> None:
        # the stand-in is ours: what a failed upload left there is replaced, never refused
        OutputTarget.__init__(self, self._stand_in(output, overwrite, inputs), overwrite=True, sidecars=sidecars)
        self._trees, self._sidecars, self._resume = [], [sidecar_path(self.output, s) for s in sidecars], resume
        self._check_objects()


class S3TiledTarget(S3Upload, TiledTarget):
    """Tiled output under ``s3://bucket/prefix/`` (or beside ``s3://bucket/name.vrt``)."""

    def __init__(self, output: str, overwrite: bool = False, inputs: Sequence[str | os.PathLike] = (),
                 resume: bool = False) -> None:
        TiledTarget.__init__(self, self._stand_in(output, overwrite, inputs), overwrite=True, stand_in=True)
        self._trees, self._sidecars, self._resume = [self.data], [], resume
        self._check_objects()


class S3ZarrTarget(S3Upload, ZarrTarget):
    """A Zarr store at ``s3://bucket/key.zarr`` (and its captions beside it)."""

    def __init__(self, output: str, overwrite: bool = False, inputs: Sequence[str | os.PathLike] = (),
                 resume: bool = False) -> None:
        ZarrTarget.__init__(self, self._stand_in(output, overwrite, inputs), overwrite=True, stand_in=True)
        self._trees, self._sidecars, self._resume = [self.output], [], resume
        self._check_objects()


def s3_target(output: str | os.PathLike, split: int | None, overwrite: bool = False,
              inputs: Sequence[str | os.PathLike] = (), sidecars: Sequence[str] = (), resume: bool = False) -> S3Upload:
    """The target of an OUTPUT in S3: tiled when ``split`` is set, Zarr for ``.zarr``, else a COG.
    ``resume``: objects a killed upload left (all but the one that goes last) are this run's.

    Raises
    ------
    OutputError
        OUTPUT names no object, the bucket cannot be reached, or OUTPUT is an input.
    OutputExistsError
        An object of the output exists and ``overwrite`` is False.
    """
    text = os.fspath(output)
    if split is not None:
        return S3TiledTarget(text, overwrite, inputs, resume)
    if is_zarr_output(text):
        return S3ZarrTarget(text, overwrite, inputs, resume)
    return S3CogTarget(text, overwrite, inputs, sidecars, resume)
