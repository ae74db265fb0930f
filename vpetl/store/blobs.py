"""Where clip bytes live: a folder or any fsspec URL (``s3://bucket/prefix``, ``gs://…``, ``memory://``, …).

:class:`BlobStore` only moves bytes; naming and validation belong to the caller (:mod:`vpetl.store.clips`). A
write is complete before it returns, so an index written afterwards never names half an object:

- a local folder gets a temp file + ``os.replace`` (:func:`vpetl.artifact.atomic_write`);
- any other filesystem gets one ``pipe_file``: on object stores one PUT (or a multipart upload, which appears only
  when completed), so a reader sees the whole object or none.

Remote endpoints and credentials are whatever the fsspec backend reads: for S3 (s3fs → botocore) the standard
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``, ``~/.aws`` or an instance role; fsspec's own ``FSSPEC_S3_ENDPOINT_URL`` style variables;
or ``storage_options`` passed in code.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vpetl.artifact import atomic_write
from vpetl.errors import InvalidRequest


class BlobStore:
    """Bytes under one root: ``url`` is a local path (``str`` or ``PathLike``) or an fsspec URL.

    Args:
        url: the root. A ``PathLike`` is always a local folder (no URL parsing, so any character is fine).
        storage_options: keyword arguments for the fsspec filesystem (e.g. ``endpoint_url``, ``key``, ``secret``).
    """

    def __init__(self, url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> None:
        from fsspec.core import url_to_fs
        from fsspec.implementations.local import LocalFileSystem

        if isinstance(url, os.PathLike):
            fs: Any = LocalFileSystem()
            root = os.fspath(url)
        else:
            fs, root = url_to_fs(url, **dict(storage_options or {}))
        self.fs = fs
        self.local = isinstance(fs, LocalFileSystem)
        # resolved once, so the escape check below compares like with like (symlinks in the data dir included)
        self.root = str(Path(root).resolve()) if self.local else root.rstrip("/")

    @property
    def url(self) -> str:
        """The root as a URL (for messages; holds no credentials, those live in the filesystem object)."""
        return str(self.fs.unstrip_protocol(self.root))

    def key(self, *parts: str) -> str:
        """The key of ``parts`` under the root. Callers validate the parts; for a local folder the result is also
        checked to stay under the root (defence in depth: a symlink inside could still point out)."""
        key = "/".join((self.root, *parts)) if self.root else "/".join(parts)
        if self.local and not Path(key).resolve().is_relative_to(self.root):
            raise InvalidRequest("clip path escapes the clip directory")
        return key

    def display(self, key: str) -> str:
        return str(self.fs.unstrip_protocol(key))

    def write(self, key: str, data: bytes) -> bool:
        """Write ``data`` completely at ``key``. Returns False when a local file already exists (keys are content
        addresses, so it holds the same bytes). Remote objects are always put: a listing cache could claim an
        object exists that another process has just deleted, and putting the same bytes twice is harmless."""
        if self.local:
            path = Path(key)
            if path.exists():
                return False
            atomic_write(path, data)
            return True
        self.fs.pipe_file(key, data)
        return True

    def read(self, key: str) -> bytes:
        """The bytes at ``key``; FileNotFoundError if there are none."""
        return bytes(self.fs.cat_file(key))

    def remove(self, key: str) -> None:
        """Remove one object; missing is fine."""
        try:
            self.fs.rm_file(key)
        except FileNotFoundError:
            pass

    def remove_tree(self, *parts: str) -> None:
        """Remove everything under ``parts`` (validated by the caller); missing is fine."""
        prefix = self.key(*parts)
        if self.local:
            path = Path(prefix)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            return
        try:
            self.fs.rm(prefix, recursive=True)
        except FileNotFoundError:
            pass
