"""Does an "external" set hold the images a model was trained on?

An external validation is only external if none of its images, and none of its women, were seen in training.
A prepared folder that holds the training images again (the same files under another name, a copy in another
folder, the same patients prepared as another dataset) scores a model on what it learnt and reports a calm,
flattering number. Before any external set is scored its rows are compared with the run's training and
validation rows three ways:

* by **image path** (the same file, resolved);
* by **file content**: a fingerprint of each file's bytes (its size, first and last MiB: a byte-identical copy
  anywhere, under any name, matches; reading 2 MiB per file keeps a 3,000-image check to seconds);
* by **patient**: the same ``(dataset, patient_id)``.

Training-side fingerprints are kept in the run (``fingerprints.csv``, keyed by path, size and modification
time) so that comparing a run with several external sets reads its training files once.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mammobench.data.manifest import patient_key
from mammobench.runtime import MammobenchError, atomic_write_csv, format_list

#: Bytes read from each end of a file for its fingerprint.
FINGERPRINT_BYTES = 1 << 20


class OverlapError(MammobenchError):
    """An external set that shares images or patients with the run's training data."""


def file_fingerprint(path: str | Path, chunk: int = FINGERPRINT_BYTES) -> str:
    """SHA-256 of a file's size, first and last ``chunk`` bytes (the whole file when it is smaller): equal for
    byte-identical copies, different for different images (a DICOM's first MiB holds its unique UIDs, an image
    file's its compressed pixels). Empty for a file that cannot be read (reported when it is decoded)."""
    try:
        size = os.path.getsize(path)
        h = hashlib.sha256(str(size).encode())
        with open(path, "rb") as fh:
            h.update(fh.read(chunk))
            if size > 2 * chunk:
                fh.seek(-chunk, os.SEEK_END)
                h.update(fh.read(chunk))
            elif size > chunk:
                h.update(fh.read())
    except OSError:
        return ""
    return h.hexdigest()


def fingerprints(paths: list[str], *, store: Path | None = None) -> list[str]:
    """Fingerprints of ``paths``; with ``store`` (a CSV), reused for files whose size and modification time are
    unchanged, and the store updated atomically."""
    known: dict[tuple[str, int, int], str] = {}
    if store is not None and store.is_file():
        table = pd.read_csv(store, dtype={"path": str, "fingerprint": str}, keep_default_na=False)
        columns = table[["path", "size", "mtime_ns", "fingerprint"]]
        known = {(p, int(s), int(m)): f for p, s, m, f in columns.itertuples(index=False)}
    out, rows = [], []
    for p in paths:
        try:
            st = os.stat(p)
            key = (str(p), int(st.st_size), int(st.st_mtime_ns))
        except OSError:
            out.append("")
            continue
        fp = known.get(key) or file_fingerprint(p)
        out.append(fp)
        rows.append((*key, fp))
    if store is not None and rows:
        atomic_write_csv(store, pd.DataFrame(rows, columns=["path", "size", "mtime_ns", "fingerprint"]).drop_duplicates("path"))
    return out


@dataclass
class Overlap:
    """Which external rows share an image or a patient with the training rows.

    Attributes:
        mask: ``(N,)`` bool over the external rows: True where a row overlaps in any way.
        by_path, by_content, by_patient: rows overlapping in each way (a row can count in several).
        examples: up to five ``external sample -> training sample (how)`` lines.
    """

    mask: np.ndarray
    by_path: int = 0
    by_content: int = 0
    by_patient: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return int(self.mask.sum())

    def summary(self) -> dict[str, object]:
        return {"rows": self.rows, "by_path": self.by_path, "by_content": self.by_content,
                "by_patient": self.by_patient, "examples": self.examples}

    def describe(self, external: str, run: str) -> str:
        return (f"{external} shares {self.rows} row(s) with the training and validation data of {run} (same image "
                f"file: {self.by_path}; same file content under another path: {self.by_content}; same patient: "
                f"{self.by_patient}), e.g. {format_list(self.examples, 3)}")


def find_overlap(external: pd.DataFrame, training: pd.DataFrame, *, store: Path | None = None) -> Overlap:
    """Compare external manifest rows with a run's training (+ validation) rows by path, content and patient.

    Args:
        external, training: manifest rows (``sample_id``, ``dataset``, ``patient_id``, ``image_path``).
        store: where the training side's fingerprints are kept between calls (the run's ``fingerprints.csv``).
    """
    def resolved(paths: pd.Series) -> list[str]:
        return [str(Path(p).resolve()) for p in paths.astype(str)]

    ext_paths, train_paths = resolved(external["image_path"]), resolved(training["image_path"])
    train_ids = training["sample_id"].astype(str).tolist()
    by_path_index = dict(zip(train_paths, train_ids, strict=True))
    path_hit = np.array([p in by_path_index for p in ext_paths], dtype=bool)

    ext_prints = fingerprints(ext_paths)
    unique_train = sorted(by_path_index)
    train_prints = fingerprints(unique_train, store=store)
    by_print = {fp: by_path_index[p] for p, fp in zip(unique_train, train_prints, strict=True) if fp}
    content_hit = np.array([bool(fp) and fp in by_print for fp in ext_prints], dtype=bool) & ~path_hit

    def patients(frame: pd.DataFrame) -> list[str]:
        return patient_key(frame).tolist()

    train_patients = dict(zip(patients(training), train_ids, strict=True))
    ext_patients = patients(external)
    patient_hit = np.array([p in train_patients for p in ext_patients], dtype=bool)

    mask = path_hit | content_hit | patient_hit
    examples = []
    ext_ids = external["sample_id"].astype(str).tolist()
    for i in np.nonzero(mask)[0][:5]:
        if path_hit[i]:
            examples.append(f"{ext_ids[i]} -> {by_path_index[ext_paths[i]]} (same file)")
        elif content_hit[i]:
            examples.append(f"{ext_ids[i]} -> {by_print[ext_prints[i]]} (same content)")
        else:
            examples.append(f"{ext_ids[i]} -> {train_patients[ext_patients[i]]} (same patient {ext_patients[i]})")
    return Overlap(mask, int(path_hit.sum()), int(content_hit.sum()), int(patient_hit.sum()), examples)
