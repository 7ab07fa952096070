"""MovieLens 100K's user and item metadata (from the same recbole wheel as the ratings) as
`FeatureData`, for the factorization-machine bench."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from service.ml.features import FeatureData, Scalar
from service.tools.datasets import RECBOLE_REQUIREMENT

MEMBERS = {
    "ml-100k.item": "recbole/dataset_example/ml-100k/ml-100k.item",
    "ml-100k.user": "recbole/dataset_example/ml-100k/ml-100k.user",
}


def fetch_metadata(cache_dir: Path) -> Path:
    """The folder holding ml-100k.item and ml-100k.user, downloading the wheel once."""
    folder = cache_dir / "ml-100k"
    if all((folder / name).exists() for name in MEMBERS):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mfserve-recbole-") as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "-q", "-d", tmp, RECBOLE_REQUIREMENT,
        ]  # fmt: skip
        subprocess.run(command, capture_output=True, text=True, check=True)
        wheel = next(Path(tmp).glob("recbole-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            for name, member in MEMBERS.items():
                (folder / name).write_bytes(archive.read(member))
    return folder


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        header = [c.split(":")[0] for c in handle.readline().rstrip("\n").split("\t")]
        return [
            dict(zip(header, line.rstrip("\n").split("\t"), strict=False))
            for line in handle
            if line.strip()
        ]


def load_metadata(cache_dir: Path) -> FeatureData:
    """Items: genres as tags, release year as a number; users: age, gender, occupation."""
    folder = fetch_metadata(cache_dir)
    tags: dict[str, list[str]] = {}
    item_attributes: dict[str, dict[str, Scalar]] = {}
    for row in _rows(folder / "ml-100k.item"):
        item = row["item_id"]
        tags[item] = row.get("class", "").split()
        year = row.get("release_year", "").strip()
        item_attributes[item] = {"year": int(year)} if year.isdigit() else {}
    users: dict[str, dict[str, Scalar]] = {}
    for row in _rows(folder / "ml-100k.user"):
        users[row["user_id"]] = {
            "age": int(row["age"]),
            "gender": row["gender"],
            "occupation": row["occupation"],
        }
    return FeatureData(user_attributes=users, item_tags=tags, item_attributes=item_attributes)
