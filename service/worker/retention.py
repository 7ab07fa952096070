"""Artifact retention: delete the artifacts of versions beyond the newest K, and stray files."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from service.db import versions
from service.db.session import transaction
from service.ml.artifacts import ARTIFACT_SUFFIX, TEMP_PREFIX

log = logging.getLogger(__name__)

ORPHAN_GRACE_S = 3600.0
"""Unreferenced artifact files (and temporary files) older than this are removed."""


def prune_artifacts(
    sessions: sessionmaker[Session],
    write_sessions: sessionmaker[Session],
    artifact_dir: Path,
    keep: int,
) -> list[int]:
    """Delete artifacts of versions beyond the newest `keep` (never the active one), and
    unreferenced or temporary files older than an hour; returns the pruned versions."""
    with transaction(write_sessions) as session:
        candidates = versions.prune_candidates(session, keep)
        pruned = versions.mark_pruned(session, [v.version for v in candidates])
    with transaction(sessions) as session:
        referenced = versions.referenced_artifacts(session)
    for record in candidates:
        if record.version in pruned and record.artifact not in referenced:
            (artifact_dir / record.artifact).unlink(missing_ok=True)
    if pruned:
        log.info("retention removed the artifacts of versions %s", pruned)
    remove_orphans(artifact_dir, referenced)
    return pruned


def remove_orphans(artifact_dir: Path, referenced: set[str]) -> None:
    """Remove our files in `artifact_dir` that no version refers to, once they are an hour old
    (a worker may be writing a new one right now)."""
    if not artifact_dir.is_dir():
        return
    cutoff = time.time() - ORPHAN_GRACE_S
    for path in artifact_dir.iterdir():
        is_ours = path.name.startswith(TEMP_PREFIX) or path.name.endswith(ARTIFACT_SUFFIX)
        if not is_ours or path.name in referenced or not path.is_file():
            continue
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                log.info("removed unreferenced artifact file %s", path.name)
        except OSError:
            continue
