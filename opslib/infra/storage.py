"""Write-once object storage on fsspec (a local folder by default, ``s3://``/``gs://`` by URL).

Every object is published atomically (a reader sees all of it or nothing) and never overwritten;
its sha256 is recorded beside it in ``<key>.sha256`` (written after the object) and returned to the
caller. Write-once holds against racing writers on a local folder (``link``) and on S3 (a
conditional PUT, which also stores the sha256 in the object's metadata); elsewhere it is a
check-then-put, best-effort.

Verified reads (``check``, ``read_verified``, ``open_verified``) hash what they read and compare it
with that recorded sha256 — and with the one the caller's own record holds (a manifest, the
Metadata DB), when it has one — before anything is used: a changed or damaged object raises
``ChecksumMismatch``, a gone one ``ObjectMissing``; both are ``opslib.errors.IntegrityFailure``
and name the key. Datasets, evaluation sets, model artifacts and index snapshots are only ever
read this way.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import fsspec
from fsspec.implementations.local import LocalFileSystem

from opslib.errors import Conflict, IntegrityFailure, Invalid, NotFound, OpsError

SHA_SUFFIX = ".sha256"
# S3 user metadata key holding the object's sha256 (sent as ``x-amz-meta-sha256``).
_META_SHA = "sha256"
_TMP_DIR = ".tmp"
_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@=+-]*$")


class StorageError(OpsError):
    """A refused storage operation; the message names the key and the reason."""


class ObjectExistsError(StorageError, Conflict):
    pass


class ObjectNotFoundError(StorageError, NotFound):
    pass


class InvalidKeyError(StorageError, Invalid, ValueError):
    pass


class ChecksumMismatch(StorageError, IntegrityFailure):
    """A verified read found an object whose content is not what was recorded when it was written
    (changed or damaged since), or one without a recorded sha256 at all."""

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


class ObjectMissing(StorageError, IntegrityFailure):
    """A verified read found no object under a key that was written and is recorded elsewhere
    (deleted or lost since). Not ``NotFound``: the caller named something that exists in its
    records; the store lost it."""

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class StoredObject:
    key: str
    sha256: str
    size: int


def validate_key(key: str) -> str:
    """A relative ``a/b/c.ext`` key that cannot escape the store root."""
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(f"key {key!r}: must be a non-empty string")
    if key.startswith("/") or "\\" in key or re.match(r"^[A-Za-z]+:", key):
        raise InvalidKeyError(f"key {key!r}: must be relative (no leading '/', drive or scheme)")
    parts = key.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidKeyError(f"key {key!r}: empty, '.' or '..' path segments are not allowed")
        if not _KEY_PART.match(part):
            raise InvalidKeyError(
                f"key {key!r}: segment {part!r} may only use letters, digits and ._@=+- "
                "and must start with a letter or digit"
            )
    if key.endswith(SHA_SUFFIX):
        raise InvalidKeyError(f"key {key!r}: the {SHA_SUFFIX} suffix is reserved for checksums")
    return key


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


class ObjectStore:
    """A write-once key/value store rooted at an fsspec URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        # No directory-listing cache: other processes (workers, kernels, endpoints) publish into
        # the same store, and a cached listing hides their objects from exists() and list().
        # Endpoint and credentials come from the backend's own configuration (for s3://, the
        # standard AWS_* variables: docs/scaling-guide.md).
        self.fs, root = fsspec.core.url_to_fs(url, use_listings_cache=False)
        self.root = root.rstrip("/")
        self._local = isinstance(self.fs, LocalFileSystem)
        # S3 has conditional PUTs and user metadata: write-once is race-free there (``_publish_remote``).
        self._s3 = not self._local and bool({"s3", "s3a"} & set(self._protocols()))
        if self._local:
            os.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    def _path(self, key: str) -> str:
        return f"{self.root}/{validate_key(key)}"

    def local_path(self, key: str) -> Path:
        """Filesystem path of ``key`` (local stores only), for libraries that need a path."""
        if not self._local:
            raise StorageError(f"{self.url} is not a local folder; copy {key!r} out first")
        return Path(self._path(key))

    def _protocols(self) -> tuple[str, ...]:
        protocol = self.fs.protocol
        return (protocol,) if isinstance(protocol, str) else tuple(protocol)

    def uri(self, key: str) -> str:
        """The full fsspec URL of ``key``, recorded in the Metadata DB as its storage path."""
        path = self._path(key)
        return path if self._local else f"{self._protocols()[0]}://{path}"

    # Writing ------------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        """Publish ``data`` under ``key``; an existing key is an error and is left unchanged."""
        final = self._path(key)
        digest = sha256_bytes(data)
        if self._local:
            self._publish_local(final, data, digest)
        else:
            # A single PUT (or a completed multipart upload) is atomic: readers see all of it or nothing.
            self._publish_remote(key, final, digest, functools.partial(self.fs.pipe_file, final, data))
        return StoredObject(key=key, sha256=digest, size=len(data))

    def put_file(self, key: str, source: Path) -> StoredObject:
        """Publish a local file without reading it into memory (datasets can be large)."""
        source = Path(source)
        final = self._path(key)
        digest, size = sha256_file(source), source.stat().st_size
        if self._local:
            os.makedirs(posixpath.dirname(final), exist_ok=True)
            tmp = self._temp_name()
            shutil.copyfile(source, tmp)
            self._link_into_place(tmp, final)
            self._write_checksum(final, digest)
        else:
            self._publish_remote(key, final, digest, functools.partial(self.fs.put_file, str(source), final))
        return StoredObject(key=key, sha256=digest, size=size)

    def put_text(self, key: str, text: str) -> StoredObject:
        return self.put_bytes(key, text.encode("utf-8"))

    def _publish_remote(self, key: str, final: str, digest: str, upload: Callable[..., object]) -> None:
        """Upload the object, then its ``.sha256`` sidecar: a crash in between leaves an object
        whose checksum is recovered on read, never a checksum for an object that is not there."""
        if self._s3:
            try:
                # IfNoneMatch "*": S3 itself refuses the PUT when the key exists, so of racing
                # writers exactly one wins. The sha256 rides in the same PUT as the data.
                upload(mode="create", Metadata={_META_SHA: digest})
            except FileExistsError:
                raise self._exists_error(key) from None
        else:
            # Other backends may lack conditional writes: check-then-put is best-effort write-once.
            if self.fs.exists(final):
                raise self._exists_error(key)
            upload()
        self.fs.pipe_file(final + SHA_SUFFIX, digest.encode())

    def _exists_error(self, key: str) -> ObjectExistsError:
        return ObjectExistsError(f"key {key!r}: already exists in {self.url} (write-once)")

    def _publish_local(self, final: str, data: bytes, digest: str) -> None:
        os.makedirs(posixpath.dirname(final), exist_ok=True)
        tmp = self._temp_name()
        self._write_synced(tmp, data)
        self._link_into_place(tmp, final)
        self._write_checksum(final, digest)

    def _link_into_place(self, tmp: str, final: str) -> None:
        try:
            # link() fails if the name exists: publishing is atomic *and* never clobbers,
            # even when two writers race for the same key.
            os.link(tmp, final)
        except FileExistsError:
            raise self._exists_error(final[len(self.root) + 1 :]) from None
        finally:
            os.unlink(tmp)

    def _write_checksum(self, final: str, digest: str) -> None:
        tmp = self._temp_name()
        self._write_synced(tmp, digest.encode())
        os.replace(tmp, final + SHA_SUFFIX)

    def _temp_name(self) -> str:
        tmp_dir = f"{self.root}/{_TMP_DIR}"
        os.makedirs(tmp_dir, exist_ok=True)
        return f"{tmp_dir}/{uuid.uuid4().hex}"

    @staticmethod
    def _write_synced(path: str, data: bytes) -> None:
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    # Reading ------------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def get_bytes(self, key: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self._path(key)))
        except FileNotFoundError:
            raise ObjectNotFoundError(f"key {key!r}: not found in {self.url}") from None

    def get_text(self, key: str) -> str:
        return self.get_bytes(key).decode("utf-8")

    def open(self, key: str) -> IO[bytes]:
        if not self.exists(key):
            raise ObjectNotFoundError(f"key {key!r}: not found in {self.url}")
        return cast(IO[bytes], self.fs.open(self._path(key), "rb"))  # fsspec is untyped

    def recorded_sha256(self, key: str) -> str:
        recorded = self._recorded_digest(key)
        if recorded is not None:
            return recorded
        final = self._path(key)
        if self._local and os.path.isfile(final):
            # A crash between publishing the object and writing its checksum: the object is
            # whole (it was synced before the atomic link), so its checksum is recorded now.
            digest = sha256_file(Path(final))
            self._write_checksum(final, digest)
            return digest
        raise ObjectNotFoundError(f"key {key!r}: no recorded checksum in {self.url}")

    def _recorded_digest(self, key: str) -> str | None:
        """The sha256 recorded when ``key`` was written, or None when nothing records one.

        On S3 the object's own metadata holds it too (written in the same PUT as the data): a
        missing sidecar (a crash between the data and the sidecar) is recovered from it, and a
        sidecar that disagrees with it is a ``ChecksumMismatch``."""
        final = self._path(key)
        sidecar = self._read_sidecar(final)
        if not self._s3:
            return sidecar
        stored_with_object = self._metadata_sha256(final)
        if sidecar is None:
            if stored_with_object is not None:
                # A crash between the data PUT and the sidecar: the metadata came with the data.
                self.fs.pipe_file(final + SHA_SUFFIX, stored_with_object.encode())
            return stored_with_object
        if stored_with_object is not None and stored_with_object != sidecar:
            raise ChecksumMismatch(
                f"key {key!r}: its {SHA_SUFFIX} sidecar ({sidecar[:12]}…) and the sha256 stored with the object "
                f"({stored_with_object[:12]}…) disagree in {self.url}: one was changed after it was written",
                key=key,
            )
        return sidecar

    def _read_sidecar(self, final: str) -> str | None:
        try:
            return bytes(self.fs.cat_file(final + SHA_SUFFIX)).decode().strip()
        except FileNotFoundError:
            return None

    def _metadata_sha256(self, final: str) -> str | None:
        """The sha256 in the S3 object's user metadata; None for an object written without it
        (before this was recorded, or by hand) or a missing object."""
        try:
            metadata = self.fs.metadata(final)
        except FileNotFoundError:
            return None
        value = metadata.get(_META_SHA)
        return value.strip() if isinstance(value, str) else None

    def verify(self, key: str) -> bool:
        """True iff the object's content still matches its recorded sha256."""
        return sha256_bytes(self.get_bytes(key)) == self.recorded_sha256(key)

    # Verified reading -----------------------------------------------------------------------
    def check(self, key: str, expected_sha256: str | None = None, *, recorded_by: str = "its record") -> str:
        """Hash the object as stored (streamed; nothing is kept) and check it; returns its sha256.

        ``expected_sha256``: the sha256 the caller's own record holds (``recorded_by`` names that
        record in the error), checked as well as the one recorded beside the object."""
        actual = self._hash_into(key, None)
        self._check_digest(key, actual, expected_sha256, recorded_by)
        return actual

    def read_verified(self, key: str, expected_sha256: str | None = None, *, recorded_by: str = "its record") -> bytes:
        """The object's bytes, read once and checked as ``check`` does before they are returned."""
        buffer = io.BytesIO()
        actual = self._hash_into(key, buffer)
        self._check_digest(key, actual, expected_sha256, recorded_by)
        return buffer.getvalue()

    def open_verified(
        self,
        key: str,
        expected_sha256: str | None = None,
        *,
        recorded_by: str = "its record",
        spool_bytes: int = 64 << 20,
    ) -> IO[bytes]:
        """A read-only handle on a private copy of the object, checked as ``check`` does before it
        is returned: what the caller reads is exactly what was verified, however large (the copy
        stays in memory up to ``spool_bytes``, then in a temporary file). Close it when done."""
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=spool_bytes)  # noqa: SIM115 - returned open
        try:
            actual = self._hash_into(key, spool)
            self._check_digest(key, actual, expected_sha256, recorded_by)
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return spool

    def _hash_into(self, key: str, sink: IO[bytes] | None) -> str:
        digest = hashlib.sha256()
        try:
            with self.fs.open(self._path(key), "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
                    if sink is not None:
                        sink.write(block)
        except FileNotFoundError:
            raise ObjectMissing(
                f"key {key!r}: gone from {self.url} (it was written and is recorded, but is no longer there)", key=key
            ) from None
        return digest.hexdigest()

    def _check_digest(self, key: str, actual: str, expected: str | None, recorded_by: str) -> None:
        recorded = self._recorded_digest(key)
        if recorded is None:
            if not self._local:
                raise ChecksumMismatch(
                    f"key {key!r}: no recorded sha256 in {self.url}, so its content cannot be verified", key=key
                )
            # A crash between publishing the object and writing its checksum (``recorded_sha256``):
            # recorded now — unless the caller's record says the content is not what was written.
            if expected is None or actual == expected:
                self._write_checksum(self._path(key), actual)
            recorded = actual
        if actual != recorded:
            raise ChecksumMismatch(
                f"key {key!r}: content fails its recorded sha256 in {self.url} (recorded {recorded[:12]}…, "
                f"read {actual[:12]}…): it was changed or damaged after it was written",
                key=key,
            )
        if expected is not None and actual != expected:
            raise ChecksumMismatch(
                f"key {key!r}: content does not match the sha256 {recorded_by} records in {self.url} "
                f"({expected[:12]}…, read {actual[:12]}…): it was replaced after it was written",
                key=key,
            )

    def list(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix`` (a folder-like key), sorted; checksums and temp files excluded."""
        base = self.root if not prefix else self._path(prefix.rstrip("/"))
        if not self.fs.exists(base):
            return []
        keys = []
        for path in self.fs.find(base):
            key = path[len(self.root) + 1 :] if path.startswith(self.root + "/") else path
            if key.endswith(SHA_SUFFIX) or key.startswith(_TMP_DIR + "/"):
                continue
            keys.append(key)
        return sorted(keys)

    def iter_lines(self, key: str) -> Iterator[bytes]:
        """Stream an object's lines (bytes, newline kept) without loading it whole."""
        with self.open(key) as handle:
            yield from handle


# Reading operator-supplied JSON Lines files with errors that name the file and line.
def read_objects(path: Path, error: type[Exception]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; ``error`` for a line that is not an object."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(value, dict):
                raise error(f"{path}:{number}: not a JSON object")
            yield number, value
