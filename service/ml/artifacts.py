"""Model artifacts: one file per trained version, checked by sha256 before anything is read.

An artifact is an uncompressed POSIX tar holding one or two saved model directories, `model/`
(the trained model) and optionally `fallback/` (the popularity model used for users the model
cannot score), and optionally `snapshot.json` (what data the model was trained on). Only the files
that `Recommender.save` writes are accepted, as regular files, under those two prefixes; nothing
in the archive chooses a path on disk, and nothing is unpickled.

Writing goes to a temporary file in the destination directory, which is flushed, fsynced and
renamed into place, so a reader never sees a half-written artifact under the final name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from service.ml.base import (
    CONFIG_FILE,
    ITEM_IDS_FILE,
    TENSORS_FILE,
    USER_IDS_FILE,
    Recommender,
)
from service.ml.catalog import load_model

MODEL_PREFIX = "model"
"""Archive folder of the trained model."""

FALLBACK_PREFIX = "fallback"
"""Archive folder of the optional popularity fallback model."""

SNAPSHOT_MEMBER = "snapshot.json"
"""Archive member describing the training data (`SnapshotInfo` as JSON)."""

MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024
"""Largest accepted `snapshot.json`, so a hostile archive cannot exhaust memory."""

MODEL_FILES = (CONFIG_FILE, USER_IDS_FILE, ITEM_IDS_FILE, TENSORS_FILE)
"""The files of one saved model directory, in archive order."""

ARTIFACT_SUFFIX = ".mfmodel"
"""File name suffix of artifacts (an uncompressed tar)."""

TEMP_PREFIX = ".tmp-"
"""Prefix of artifacts still being written; left behind only by a crashed writer."""

_CHUNK = 1 << 20


class ArtifactError(RuntimeError):
    """An artifact cannot be used: unreadable, malformed or not the recorded file."""


class ArtifactIntegrityError(ArtifactError):
    """The artifact's sha256 differs from the recorded one (tampered with or corrupted)."""


class ArtifactFormatError(ArtifactError):
    """The artifact is not an archive of the expected members."""


@dataclass(frozen=True)
class SnapshotInfo:
    """The data a model was trained on: sizes, newest rating time and per-user history versions.

    `stored_until` is the newest `stored_at` of the ratings read; `history_versions` maps each
    user's external id to the history version it had in the snapshot, so that a server can tell
    which users changed since training without comparing clocks.
    """

    taken_at: datetime
    n_ratings: int
    n_users: int
    n_items: int
    newest_rating_at: datetime | None = None
    stored_until: datetime | None = None
    history_versions: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def summary(self) -> dict[str, Any]:
        """The snapshot without per-user versions, as JSON-ready values."""
        return {
            "taken_at": self.taken_at.isoformat(),
            "n_ratings": self.n_ratings,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "newest_rating_at": _iso(self.newest_rating_at),
            "stored_until": _iso(self.stored_until),
        }

    def to_json(self) -> bytes:
        """Serialize, per-user versions included."""
        return json.dumps({**self.summary(), "history_versions": self.history_versions}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SnapshotInfo:
        """Parse what `to_json` wrote."""
        raw = json.loads(data)
        return cls(
            taken_at=datetime.fromisoformat(raw["taken_at"]),
            n_ratings=int(raw["n_ratings"]),
            n_users=int(raw["n_users"]),
            n_items=int(raw["n_items"]),
            newest_rating_at=_parse_time(raw.get("newest_rating_at")),
            stored_until=_parse_time(raw.get("stored_until")),
            history_versions={str(k): int(v) for k, v in raw.get("history_versions", {}).items()},
        )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_time(value: object) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


@dataclass(frozen=True)
class ArtifactInfo:
    """Where an artifact was written, its sha256 (hex) and size in bytes."""

    path: Path
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class LoadedArtifact:
    """The models read from an artifact: the trained one and its fallback (if packed)."""

    model: Recommender[Any]
    fallback: Recommender[Any] | None
    snapshot: SnapshotInfo | None


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes and counts bytes on their way to a file."""

    def __init__(self, target: IO[bytes]) -> None:
        super().__init__()
        self._target = target
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        """Always writable."""
        return True

    def write(self, data: Any) -> int:
        """Hash, count and forward a chunk."""
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.size += len(view)
        self._target.write(view)
        return len(view)


def _members(directory: Path, prefix: str) -> list[tuple[str, Path]]:
    missing = [name for name in MODEL_FILES if not (directory / name).is_file()]
    if missing:
        raise ArtifactFormatError(f"saved model in {directory} lacks {', '.join(missing)}")
    return [(f"{prefix}/{name}", directory / name) for name in MODEL_FILES]


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    # Fixed metadata: the same model files always give the same bytes and the same sha256.
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    return info


def _add_file(archive: tarfile.TarFile, name: str, source: Path) -> None:
    with source.open("rb") as handle:
        archive.addfile(_member_info(name, source.stat().st_size), handle)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pack_directories(
    model_dir: Path,
    destination_dir: Path,
    fallback_dir: Path | None = None,
    stem: str = "model",
    snapshot: SnapshotInfo | None = None,
) -> ArtifactInfo:
    """Pack saved model directories into one artifact `<stem>-<sha256 prefix>.mfmodel`.

    The file is written under a temporary name, fsynced and renamed, then the directory is fsynced.
    """
    members = _members(model_dir, MODEL_PREFIX)
    if fallback_dir is not None:
        members += _members(fallback_dir, FALLBACK_PREFIX)
    destination_dir.mkdir(parents=True, exist_ok=True)
    temp = destination_dir / f"{TEMP_PREFIX}{uuid.uuid4().hex}{ARTIFACT_SUFFIX}"
    try:
        with temp.open("wb") as handle:
            writer = _HashingWriter(handle)
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.USTAR_FORMAT) as archive:
                for name, source in members:
                    _add_file(archive, name, source)
                if snapshot is not None:
                    data = snapshot.to_json()
                    archive.addfile(_member_info(SNAPSHOT_MEMBER, len(data)), io.BytesIO(data))
            handle.flush()
            os.fsync(handle.fileno())
        sha256 = writer.digest.hexdigest()
        final = destination_dir / f"{stem}-{sha256[:16]}{ARTIFACT_SUFFIX}"
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(destination_dir)
    return ArtifactInfo(path=final, sha256=sha256, size_bytes=writer.size)


def write_artifact(
    model: Recommender[Any],
    destination_dir: Path,
    fallback: Recommender[Any] | None = None,
    stem: str | None = None,
    snapshot: SnapshotInfo | None = None,
) -> ArtifactInfo:
    """Save a model (and its fallback) and pack them into one artifact in `destination_dir`."""
    with tempfile.TemporaryDirectory(prefix="mfserve-save-") as scratch:
        model_dir = Path(scratch) / MODEL_PREFIX
        model.save(model_dir)
        fallback_dir = None
        if fallback is not None:
            fallback_dir = Path(scratch) / FALLBACK_PREFIX
            fallback.save(fallback_dir)
        return pack_directories(
            model_dir, destination_dir, fallback_dir, stem or model.name, snapshot
        )


def file_sha256(path: Path) -> str:
    """The sha256 (hex) of a file's bytes."""
    with path.open("rb") as handle:
        return _stream_sha256(handle)


def _stream_sha256(handle: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := handle.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _extract(handle: IO[bytes], target: Path) -> tuple[set[str], bytes | None]:
    """Copy whitelisted regular members into `target`; returns the prefixes found and the
    snapshot member's bytes (if any)."""
    allowed = {
        f"{prefix}/{name}": (prefix, name)
        for prefix in (MODEL_PREFIX, FALLBACK_PREFIX)
        for name in MODEL_FILES
    }
    allowed[SNAPSHOT_MEMBER] = ("", SNAPSHOT_MEMBER)
    seen: set[str] = set()
    snapshot: bytes | None = None
    try:
        with tarfile.open(fileobj=handle, mode="r:") as archive:
            for member in archive:
                if member.name not in allowed:
                    raise ArtifactFormatError(f"unexpected archive member {member.name!r}")
                if not member.isreg():
                    raise ArtifactFormatError(f"archive member {member.name!r} is not a file")
                if member.name in seen:
                    raise ArtifactFormatError(f"archive member {member.name!r} appears twice")
                seen.add(member.name)
                prefix, name = allowed[member.name]
                source = archive.extractfile(member)
                if source is None:  # pragma: no cover - isreg() members always have data
                    raise ArtifactFormatError(f"archive member {member.name!r} has no data")
                if member.name == SNAPSHOT_MEMBER:
                    if member.size > MAX_SNAPSHOT_BYTES:
                        raise ArtifactFormatError(f"{SNAPSHOT_MEMBER} is too large")
                    with source:
                        snapshot = source.read()
                    continue
                # The path on disk is built from our own names, never from the archive's.
                (target / prefix).mkdir(exist_ok=True)
                with source, (target / prefix / name).open("wb") as out:
                    while chunk := source.read(_CHUNK):
                        out.write(chunk)
    except tarfile.TarError as exc:
        raise ArtifactFormatError(f"not a valid artifact archive: {exc}") from exc
    prefixes = set()
    for prefix in (MODEL_PREFIX, FALLBACK_PREFIX):
        present = {name for name in MODEL_FILES if f"{prefix}/{name}" in seen}
        if present and present != set(MODEL_FILES):
            missing = sorted(set(MODEL_FILES) - present)
            raise ArtifactFormatError(f"artifact's {prefix}/ lacks {', '.join(missing)}")
        if present:
            prefixes.add(prefix)
    if MODEL_PREFIX not in prefixes:
        raise ArtifactFormatError("artifact holds no model/ directory")
    return prefixes, snapshot


def read_artifact(path: Path, expected_sha256: str) -> LoadedArtifact:
    """Verify an artifact's sha256, then load its models; raises an ArtifactError subclass."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise ArtifactError(f"cannot open artifact {path}: {exc}") from exc
    with handle:
        # Hash and extract the same open file, so a rename in between cannot swap the bytes.
        try:
            actual = _stream_sha256(handle)
        except OSError as exc:
            raise ArtifactError(f"cannot read artifact {path}: {exc}") from exc
        if actual != expected_sha256.lower():
            raise ArtifactIntegrityError(
                f"artifact {path} has sha256 {actual}, expected {expected_sha256}: refusing it"
            )
        handle.seek(0)
        with tempfile.TemporaryDirectory(prefix="mfserve-load-") as scratch:
            target = Path(scratch)
            prefixes, snapshot_bytes = _extract(handle, target)
            try:
                model = load_model(target / MODEL_PREFIX)
                fallback = (
                    load_model(target / FALLBACK_PREFIX) if FALLBACK_PREFIX in prefixes else None
                )
                snapshot = (
                    None if snapshot_bytes is None else SnapshotInfo.from_json(snapshot_bytes)
                )
            except Exception as exc:  # any failure to load means the artifact is refused
                raise ArtifactFormatError(
                    f"artifact {path} holds an unreadable model: {exc}"
                ) from exc
    return LoadedArtifact(model=model, fallback=fallback, snapshot=snapshot)
