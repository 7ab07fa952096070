"""Artifacts: one file, deterministic sha256, verified before reading, whitelist-only extraction."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from service.ml.artifacts import (
    ARTIFACT_SUFFIX,
    ArtifactError,
    ArtifactFormatError,
    ArtifactIntegrityError,
    file_sha256,
    read_artifact,
    write_artifact,
)
from service.ml.base import Recommender
from service.ml.catalog import create_model
from service.worker.pipeline import build_interactions
from tests.support.synthetic import low_rank_ratings


@pytest.fixture(scope="module")
def trained() -> tuple[Recommender[Any], Recommender[Any]]:
    data = low_rank_ratings()
    interactions = build_interactions(data, explicit=True)
    model = create_model("als-biased", {"epochs": 3, "embedding_size": 4, "device": "cpu"})
    model.fit(interactions)
    popular = create_model("popular", {})
    popular.fit(interactions)
    return model, popular


def _all_scores(model: Recommender[Any]) -> torch.Tensor:
    return model.score_users(torch.arange(model.n_users))


def test_round_trip_gives_identical_scores(
    tmp_path: Path, trained: tuple[Recommender[Any], Recommender[Any]]
) -> None:
    model, popular = trained
    snapshot = low_rank_ratings().info
    info = write_artifact(model, tmp_path, fallback=popular, snapshot=snapshot)
    assert info.path.parent == tmp_path
    assert info.path.name.endswith(ARTIFACT_SUFFIX)
    assert info.sha256 == file_sha256(info.path)
    assert info.size_bytes == info.path.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == [info.path.name]  # no temporary file left

    loaded = read_artifact(info.path, info.sha256)
    assert loaded.model.name == "als-biased"
    assert loaded.model.user_ids == model.user_ids
    assert torch.equal(_all_scores(loaded.model), _all_scores(model))
    assert loaded.fallback is not None
    assert loaded.fallback.name == "popular"
    assert torch.equal(_all_scores(loaded.fallback), _all_scores(popular))
    assert loaded.snapshot == snapshot
    assert loaded.snapshot is not None
    assert loaded.snapshot.history_versions == snapshot.history_versions


def test_same_model_gives_same_bytes(
    tmp_path: Path, trained: tuple[Recommender[Any], Recommender[Any]]
) -> None:
    model, _ = trained
    first = write_artifact(model, tmp_path / "a")
    second = write_artifact(model, tmp_path / "b")
    assert first.sha256 == second.sha256
    assert first.path.name == second.path.name


def test_wrong_sha256_is_refused(
    tmp_path: Path, trained: tuple[Recommender[Any], Recommender[Any]]
) -> None:
    info = write_artifact(trained[0], tmp_path)
    with pytest.raises(ArtifactIntegrityError, match="sha256"):
        read_artifact(info.path, "0" * 64)


def test_tampered_bytes_are_refused(
    tmp_path: Path, trained: tuple[Recommender[Any], Recommender[Any]]
) -> None:
    info = write_artifact(trained[0], tmp_path)
    data = bytearray(info.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    info.path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="refusing"):
        read_artifact(info.path, info.sha256)


def test_missing_file_is_an_artifact_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="cannot open"):
        read_artifact(tmp_path / "absent.mfmodel", "0" * 64)


def _craft(path: Path, members: list[tarfile.TarInfo], payloads: list[bytes | None]) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for member, payload in zip(members, payloads, strict=True):
            archive.addfile(member, None if payload is None else io.BytesIO(payload))
    path.write_bytes(buffer.getvalue())
    return file_sha256(path)


def _file(name: str, payload: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    return info


def test_path_traversal_member_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "evil.mfmodel"
    sha = _craft(target, [_file("../escaped.txt", b"x")], [b"x"])
    with pytest.raises(ArtifactFormatError, match="unexpected archive member"):
        read_artifact(target, sha)
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_symlink_member_is_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("model/model.json")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    target = tmp_path / "link.mfmodel"
    sha = _craft(target, [link], [None])
    with pytest.raises(ArtifactFormatError, match="not a file"):
        read_artifact(target, sha)


def test_incomplete_model_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "partial.mfmodel"
    sha = _craft(target, [_file("model/model.json", b"{}")], [b"{}"])
    with pytest.raises(ArtifactFormatError, match="lacks"):
        read_artifact(target, sha)


def test_garbage_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "garbage.mfmodel"
    target.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(ArtifactFormatError):
        read_artifact(target, file_sha256(target))


def test_unloadable_model_is_refused(
    tmp_path: Path, trained: tuple[Recommender[Any], Recommender[Any]]
) -> None:
    saved = tmp_path / "saved"
    trained[0].save(saved)
    names = ["model.json", "user_ids.json", "item_ids.json", "tensors.safetensors"]
    payloads = [(saved / name).read_bytes() for name in names]
    payloads[3] = b"not safetensors at all"
    target = tmp_path / "broken.mfmodel"
    sha = _craft(
        target, [_file(f"model/{n}", p) for n, p in zip(names, payloads, strict=True)], payloads
    )
    with pytest.raises(ArtifactFormatError, match="unreadable model"):
        read_artifact(target, sha)
