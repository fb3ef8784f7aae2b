"""Scoring another model's predictions: a 100k-row GMIC-format file against a 100k-image manifest.

    python benchmarks/bench_imported.py [--exams 25000] [--repeats 3] [--boot 200] [--out /tmp/bench_imported]

The manifest: ``--exams`` screening exams of four views, one woman each, a malignant breast in every tenth exam,
images and sample ids named as a site names them, so that GMIC's ``0_L-CC`` index is matched by exam + view after
the other keys are tried (the slowest path of ``--key auto``). The file: GMIC's ``predictions.csv`` layout
(``image_index, benign_pred, malignant_pred, benign_label, malignant_label``), rows shuffled. Timed, alternating in each repeat:

* read: ``read_predictions`` (format recognised, ids and probabilities checked);
* match: ``match_predictions`` (every row put on its manifest row, unknown and missing ids looked for);
* report: ``score_matched`` with no bootstrap, writing the evaluation folder (metrics.json, predictions.csv, plots);
* bootstrap: the same with ``--boot`` patient resamples (the issue's "plus the bootstrap", reported apart);
* baseline: ``pandas.read_csv`` + ``sklearn.metrics.roc_auc_score`` on the same file (the least a script does).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from mammobench.data.manifest import ManifestInfo, read_manifest, read_manifest_info, write_manifest
from mammobench.evaluation.imported import match_predictions, read_predictions, score_matched

VIEWS = ("L-CC", "R-CC", "L-MLO", "R-MLO")  # GMIC's VIEWS.LIST order (src/constants.py)


def build(out: Path, exams: int, seed: int = 0) -> tuple[Path, Path]:
    """A prepared manifest of ``exams`` x 4 images and a GMIC predictions file for it."""
    rng = np.random.default_rng(seed)
    e = np.repeat(np.arange(exams), 4)
    view = np.tile(VIEWS, exams)
    side = np.array([v[0] for v in view])
    malignant = (e % 10 == 0) & (side == "R")
    names = [f"{i}_{v}" for i, v in zip(e, view, strict=True)]
    frame = pd.DataFrame({  # ids and files named as a site names them: GMIC's index is matched by exam + view
        "sample_id": [f"img{j:07d}" for j in range(len(e))], "dataset": "bench", "patient_id": [f"W{i:06d}" for i in e],
        "image_path": [f"/data/dicom/1.2.826.0.1.{j}.dcm" for j in range(len(e))], "roi": "",
        "label": np.where(malignant, "MALIGNANT", "BENIGN"),
        "lesion_type": "", "laterality": side, "view": [v[2:] for v in view], "split": "test",
        "image_type": "full", "exam_id": e.astype(str)})
    info = ManifestInfo(dataset="bench", mode="full", labels=["BENIGN", "MALIGNANT"],
                        label_mapping={"name": "binary", "mapping": {}}, positive_label="MALIGNANT")
    manifest = write_manifest(frame, out / "prepared", info).parent
    z = 1.5 * malignant + rng.normal(size=len(e))
    gmic = pd.DataFrame({"image_index": names, "benign_pred": rng.random(len(e)).round(4),
                         "malignant_pred": (1 / (1 + np.exp(-z))).round(4),
                         "benign_label": (~malignant).astype(int), "malignant_label": malignant.astype(int)})
    path = out / "gmic_predictions.csv"
    gmic.sample(frac=1.0, random_state=seed).to_csv(path, index=False, float_format="%.4f")
    return manifest, path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exams", type=int, default=25_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--boot", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("/tmp/mammobench_bench_imported"))
    args = parser.parse_args()
    manifest, path = build(args.out, args.exams)
    frame, info = read_manifest(manifest), read_manifest_info(manifest)
    print(f"# {len(frame):,} images, {frame['patient_id'].nunique():,} women; {path.stat().st_size / 1e6:.1f} MB file - "
          f"{time.strftime('%Y-%m-%d')} - {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    times: dict[str, list[float]] = {k: [] for k in ("baseline", "read", "match", "report", "bootstrap")}
    for r in range(args.repeats):
        for step in (("baseline", "mammobench") if r % 2 == 0 else ("mammobench", "baseline")):
            if step == "baseline":
                t = time.perf_counter()
                table = pd.read_csv(path)
                roc_auc_score(table["malignant_label"], table["malignant_pred"])
                times["baseline"].append(time.perf_counter() - t)
                continue
            t = time.perf_counter()
            imported = read_predictions(path)
            times["read"].append(time.perf_counter() - (t0 := t))
            t = time.perf_counter()
            matched = match_predictions(imported, frame, key="auto", where=str(manifest))
            times["match"].append(time.perf_counter() - t)
            t = time.perf_counter()
            scored = score_matched(imported, matched, info.labels, info.positive_label, name="gmic", split="all",
                                   data=manifest, n_boot=0, out=args.out / f"eval{r}")
            times["report"].append(time.perf_counter() - t)
            total = time.perf_counter() - t0
            t = time.perf_counter()
            score_matched(imported, matched, info.labels, info.positive_label, name="gmic", split="all", data=manifest,
                          n_boot=args.boot, by=("view",))
            times["bootstrap"].append(time.perf_counter() - t)
            print(f"repeat {r}: read + match + report {total:.2f} s (AUC {scored.report.metrics['auc_malignant'].value:.3f}"
                  f", key {matched.key}); with {args.boot} bootstrap resamples and --by view {times['bootstrap'][-1]:.1f} s")
    print("\n| step | median s | min s |\n|---|---|---|")
    for name, values in times.items():
        label = f"report + {args.boot} bootstraps, by view" if name == "bootstrap" else name
        print(f"| {label} | {np.median(values):.2f} | {min(values):.2f} |")
    core = np.array(times["read"]) + np.array(times["match"]) + np.array(times["report"])
    print(f"| read + match + report (issue's budget: < 10 s) | {np.median(core):.2f} | {core.min():.2f} |")


if __name__ == "__main__":
    main()
