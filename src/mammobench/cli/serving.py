"""The serving commands: ``export`` (bundles, ensembles), ``keygen``, ``predict`` (images, exams, DICOM out,
DICOMweb) and ``serve`` (the local page)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

import mammobench.cli.show as show
from mammobench.cli.app import THRESHOLD_HELP, Aggregate, Average, Backend, Threshold, app
from mammobench.cli.console import command, console, err_console, fail, plain
from mammobench.runtime import MammobenchError

if TYPE_CHECKING:
    from mammobench.serving.predictor import Predictor

Opt = typer.Option
Arg = typer.Argument
TRUSTED_KEY_HELP = ("Ed25519 public key: refuse a bundle not signed with its pair (default: the keys of the trust "
                    "store, mammobench trust add).")
REQUIRE_HELP = "Refuse a bundle that is not signed by a trusted key (default: load it and say NOT verified)."
TERMS_HELP = ("Acknowledge, by name, the terms of the pretrained weights the model is built on, where they restrict "
              "redistribution or serving (e.g. mammo-fm-weights-licence).")


@command(app)
def export(
    runs: Annotated[list[Path], Arg(help="A finished run directory; several: one ensemble bundle averaging them "
                                         "(seeds of one split).")],
    out: Annotated[Path, Opt("--out", "-o", help="Bundle folder to write.")] = Path("bundle"),
    onnx: Annotated[bool, Opt(help="Also export model.onnx (dynamic batch), checked against PyTorch.")] = False,
    threshold: Annotated[Threshold, Opt(help=THRESHOLD_HELP)] = "youden",
    sign: Annotated[Path | None, Opt(help="Ed25519 private key (PEM, from mammobench keygen): write bundle.sig.")] = None,
    accept_weights_terms: Annotated[str | None, Opt(help=TERMS_HELP)] = None,
    tta: Annotated[bool, Opt(help="Predictions average the image with its horizontal and vertical flips.")] = False,
    average: Annotated[Average, Opt(help="Several runs: average their probabilities or their logits.")] = "probabilities",
) -> None:
    """Write a safe model bundle: safetensors weights + bundle.json (+ model.onnx, + bundle.sig).

    Several runs make one ensemble bundle (their threshold and temperature chosen on the validation split they
    share); for the folds of a cross-validation use `mammobench crossval ... --ensemble OUT`.
    """
    from mammobench.serving.bundle import export_bundle, read_bundle_meta
    from mammobench.serving.ensembles import export_ensemble

    if len(runs) > 1:
        path = export_ensemble(runs, out, average=average, onnx=onnx, threshold_method=threshold, sign=sign,
                               accept_weights_terms=accept_weights_terms, tta=tta)
    else:
        path = export_bundle(runs[0], out, onnx=onnx, threshold_method=threshold, sign=sign,
                             accept_weights_terms=accept_weights_terms, tta=tta)
    show.bundle(path, read_bundle_meta(path), signed_with=sign)


@command(app)
def keygen(
    out: Annotated[Path, Opt("--out", "-o", help="Folder for the key pair.")] = Path("."),
    name: Annotated[str, Opt(help="File name stem of the keys.")] = "mammobench_ed25519",
) -> None:
    """Make an Ed25519 key pair for signing bundles (private key readable by you only)."""
    from mammobench.serving.signing import generate_keypair

    private, public = generate_keypair(out, name)
    console.print(f"Private key: [bold]{private}[/] (keep it secret; export --sign {private})")
    console.print(f"Public key:  [bold]{public}[/] (give it to users; predict/serve --trusted-key {public})")


trust_app = typer.Typer(help="Whose bundles you trust: public keys a bundle's signature is checked against.",
                        no_args_is_help=True)


@command(trust_app, "add")
def trust_add(
    key: Annotated[Path, Arg(help="An Ed25519 public key (.pub.pem, from the bundle's maker: mammobench keygen).")],
    name: Annotated[str | None, Opt(help="Name it is shown by (default: the file's).")] = None,
) -> None:
    """Trust bundles signed with KEY's pair: copy it into the trust store ($XDG_CONFIG_HOME/mammobench/trusted_keys)."""
    from mammobench.serving.signing import trust_key

    known = trust_key(key, name)
    console.print(f"Trusted: {plain(known.name)} ({known.fingerprint}) in {plain(known.path)}")


@command(trust_app, "list")
def trust_list() -> None:
    """The keys bundles are checked against (the trust store and MAMMOBENCH_TRUSTED_KEYS)."""
    from mammobench.serving.signing import trust_store_dir, trusted_keys

    keys = trusted_keys()
    if not keys:
        console.print(f"No trusted key: every bundle is said NOT verified (mammobench trust add KEY.pub.pem; store: "
                      f"{plain(trust_store_dir())})")
    for k in keys:
        console.print(f"{plain(k.name)}  {k.fingerprint}  {plain(k.path)}")


@command(app)
def predict(
    bundle: Annotated[Path, Arg(help="A bundle folder (mammobench export).")],
    paths: Annotated[list[Path] | None, Arg(help="Image files and/or folders (searched recursively).")] = None,
    out: Annotated[Path, Opt("--out", "-o", help="predictions.csv or predictions.json")] = Path("predictions.csv"),
    roi: Annotated[tuple[int, int, int, int] | None, Opt(help="Lesion box x0 y0 x1 y1 in each full image.")] = None,
    backend: Annotated[Backend, Opt(help="Run the bundle's PyTorch weights or its ONNX graph.")] = "torch",
    device: Annotated[str, Opt(help="auto | cpu | cuda")] = "auto",
    batch_size: Annotated[int, Opt(help="Images per forward pass.")] = 16,
    trusted_key: Annotated[Path | None, Opt(help=TRUSTED_KEY_HELP)] = None,
    exam: Annotated[bool, Opt(help="Each folder is one exam (up to 4 views): one row per breast, images in "
                                   "<out>_images.csv.")] = False,
    aggregate: Annotated[Aggregate, Opt(help="--exam with an image model: how a breast's views combine.")] = "mean",
    cams: Annotated[Path | None, Opt(help="--exam: write a Grad-CAM heat map per image, at its full resolution, "
                                          "here.")] = None,
    laterality: Annotated[Literal["L", "R", "LEFT", "RIGHT"] | None,
                          Opt(case_sensitive=False, help="The side of lesion crop files, flipped as training flipped its "
                              "lesions (default: from each file's DICOM header or name).")] = None,
    pixel_mm: Annotated[float | None, Opt(help="The images' pixel size in mm, for a model that crops a fixed field of "
                                               "view (default: from each DICOM's header).")] = None,
    dicom_out: Annotated[Path | None, Opt(help="--exam of DICOM images (or --dicomweb): per study a Structured Report "
                                               "(TID 1500) and heat-map Secondary Captures, in DIR/<study>.")] = None,
    dicomweb: Annotated[str | None, Opt(help="A DICOMweb root URL (QIDO/WADO/STOW-RS): predict --study from it; "
                                             "credentials from MAMMOBENCH_DICOMWEB_* or --auth-file.")] = None,
    study: Annotated[list[str] | None, Opt(help="--dicomweb: the StudyInstanceUID to predict (repeatable).")] = None,
    store: Annotated[bool, Opt(help="--dicomweb: send the report and heat maps back (STOW-RS).")] = False,
    auth_file: Annotated[Path | None, Opt(help="--dicomweb: a JSON file with {token} or {user, password}.")] = None,
    require_signature: Annotated[bool, Opt(help=REQUIRE_HELP)] = False,
) -> None:
    """Predict images with a bundle; unreadable files are listed with their error, the rest still predicted.

    With --exam, each folder given is one exam: views are read from DICOM headers, else from file names
    (L_CC, L-CC, LCC, RIGHT_MLO); the result has one row per breast. With --dicomweb URL --study UID, the study's
    mammograms come from a PACS (and with --store, the report goes back to it).
    """
    from mammobench.serving.predictor import Predictor, write_predictions

    predictor = Predictor.from_bundle(bundle, backend=backend, device=device, batch_size=batch_size,
                                      trusted_key=trusted_key, require_signature=require_signature)
    show.verification(bundle, predictor.verification)
    if dicomweb is not None:
        _predict_studies(predictor, dicomweb, paths, study, dicom_out=dicom_out, store=store, auth_file=auth_file,
                         aggregate=aggregate, out=out)
        return
    if not paths:
        fail("give image files or folders (or --dicomweb URL --study UID)")
    if store or study:
        fail("--study and --store go with --dicomweb URL")
    if exam:
        from mammobench.serving.exams import predict_exam_folders, write_exam_predictions

        batch = predict_exam_folders(predictor, paths, aggregate=aggregate, cams=cams, dicom_out=dicom_out)
        files = write_exam_predictions(batch.exams, out, labels=predictor.labels)
        show.exams(batch, predictor.labels, files, temperature=predictor.temperature, positive=predictor.positive,
                   threshold=predictor.threshold, cams=cams)
        return
    if dicom_out is not None:
        fail("--dicom-out writes a report per study: give each study's folder with --exam")
    if predictor.breast_model:
        console.print("[yellow]note:[/] a two-view model given loose images predicts each as one view of a breast; "
                      "give each exam's folder with --exam for breast predictions from both views")
    results = predictor.predict_paths(paths, roi=roi, show_progress=True, laterality=laterality, pixel_mm=pixel_mm)
    if not results:
        fail(f"no image found in {', '.join(map(str, paths))}")
    write_predictions(results, out, labels=predictor.labels)
    show.predictions(results, out)
    if all(r.error for r in results):  # the CSV lists each file's reason; the exit status says nothing was done
        fail(f"none of the {len(results)} image(s) could be predicted (each reason above and in {out})")


@command(app)
def serve(
    bundle: Annotated[Path, Arg(help="A bundle folder (mammobench export).")],
    host: Annotated[str, Opt(help="Address to bind; 127.0.0.1 keeps the page on this machine.")] = "127.0.0.1",
    port: Annotated[int, Opt(help="Port.")] = 7860,
    backend: Annotated[Backend, Opt(help="Run the bundle's PyTorch weights or its ONNX graph.")] = "torch",
    max_file_mb: Annotated[int, Opt(help="Largest upload accepted.")] = 100,
    trusted_key: Annotated[Path | None, Opt(help=TRUSTED_KEY_HELP)] = None,
    accept_weights_terms: Annotated[str | None, Opt(help=TERMS_HELP)] = None,
    require_signature: Annotated[bool, Opt(help=REQUIRE_HELP)] = False,
) -> None:
    """A local web page: upload a PNG/JPEG/DICOM, see probabilities, the decision and a Grad-CAM overlay."""
    from mammobench.serving.web import serve as run_serve

    if host not in ("127.0.0.1", "localhost"):
        err_console.print(f"[yellow]warning:[/] binding to {host}: other machines can reach this page")
    console.print(f"Serving {bundle} at http://{host}:{port} (research use only; Ctrl+C to stop)")
    run_serve(bundle, host=host, port=port, backend=backend, max_file_mb=max_file_mb, trusted_key=trusted_key,
              accept_weights_terms=accept_weights_terms, require_signature=require_signature)


def _predict_studies(predictor: Predictor, url: str, paths: list[Path] | None, study: list[str] | None, *,
                     dicom_out: Path | None, store: bool, auth_file: Path | None, aggregate: str, out: Path) -> None:
    """``predict --dicomweb``: each study fetched, predicted and written; a bad study reported and the others still
    predicted; the breasts of every study predicted in ``out``; exit status 2 when any failed."""
    from mammobench.data.dicomweb import DicomWebError
    from mammobench.serving.exams import write_exam_predictions
    from mammobench.serving.pacs import predict_study

    if paths or not study:
        fail("--dicomweb URL predicts studies given with --study UID (not files)")
    done, failed = [], []
    for uid in dict.fromkeys(study):
        try:  # one bad study is reported; the others are still predicted
            result = predict_study(predictor, url, uid, dicom_out or Path("dicom_out"), store_results=store,
                                   auth_file=auth_file, aggregate=aggregate)
        except MammobenchError as exc:
            if isinstance(exc, DicomWebError) and exc.server_wide:  # unreachable, credentials refused: all would fail
                fail(exc)
            failed.append(f"study {uid}: {exc}")
            err_console.print(f"[red]study {plain(uid)} failed:[/] {plain(exc)}", soft_wrap=True, highlight=False)
            continue
        done.append(result)
        show.study(result, predictor.labels)
    if done:
        files = write_exam_predictions([r.exam for r in done], out, labels=predictor.labels)
        console.print(f"Predictions of {len(done)} studies: {plain(', '.join(map(str, files)))}")
    if failed:
        fail(f"{len(failed)} of {len(failed) + len(done)} studies failed (each named above)")
