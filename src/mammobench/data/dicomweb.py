"""DICOMweb (``dicomweb-client``): a PACS as a place images come from and reports go to.

* :func:`connect`: a client for a DICOMweb root URL, with credentials from the environment or a file (never from
  the command line, never logged or written into a run), bounded timeouts and retries.
* :func:`study_mammograms` (QIDO-RS: the study's series of modality MG, and their instances) and
  :func:`fetch_study` (WADO-RS: each instance saved as a file, which everything else reads like any image).
* :func:`store` (STOW-RS): instances sent back.

``prepare dicomweb`` (:mod:`~mammobench.data.sources.dicomweb`) builds a dataset from a query plus a labels table;
``predict --dicomweb`` (:mod:`~mammobench.serving.pacs`) predicts a study and stores its report.

Credentials, in order: a JSON file given with ``--auth-file`` (what a user names on the command line wins; the
environment's credentials are then not sent, and that is said); ``MAMMOBENCH_DICOMWEB_TOKEN`` (a bearer token);
``MAMMOBENCH_DICOMWEB_USER`` and ``MAMMOBENCH_DICOMWEB_PASSWORD`` (basic); a file named by
``MAMMOBENCH_DICOMWEB_AUTH_FILE``. A file holds ``{"token": ...}`` or ``{"user": ..., "password": ...}``. A URL
that carries them (``https://user:pw@host``) is refused: URLs end up in logs and run files.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mammobench.runtime import MammobenchError

if TYPE_CHECKING:
    from dicomweb_client.api import DICOMwebClient

logger = logging.getLogger(__name__)

TOKEN_ENV, USER_ENV, PASSWORD_ENV, AUTH_FILE_ENV = ("MAMMOBENCH_DICOMWEB_TOKEN", "MAMMOBENCH_DICOMWEB_USER",
                                                    "MAMMOBENCH_DICOMWEB_PASSWORD", "MAMMOBENCH_DICOMWEB_AUTH_FILE")
#: Seconds to connect and to read one response; further attempts on a 502/503/504 or 429 answer only. A refused or
#: timed-out connection is said at once, in one line: retrying a server that is not there only delays the answer.
TIMEOUT = (5.0, 60.0)
RETRIES = 2
MG = "MG"
_TAGS = {"study": "0020000D", "series": "0020000E", "sop": "00080018", "modality": "00080060",
         "laterality": "00200062", "view": "00185101"}


class DicomWebError(MammobenchError):
    """A DICOMweb server that cannot be reached, refuses the credentials, or has no mammograms for the study;
    ``server_wide``: the server or the credentials, not one study, are at fault."""

    def __init__(self, message: str, *, server_wide: bool = False) -> None:
        super().__init__(message)
        self.server_wide = server_wide


@dataclass(frozen=True)
class Credentials:
    """Basic (``user``, ``password``) or bearer (``token``) credentials; ``repr`` never shows the secret."""

    user: str | None = None
    password: str | None = None
    token: str | None = None
    source: str = ""

    def __repr__(self) -> str:
        kind = "bearer token" if self.token else f"user {self.user!r}"
        return f"Credentials({kind} from {self.source})"


def credentials(auth_file: str | Path | None = None) -> Credentials | None:
    """The credentials to use (see the module docstring), or None for an open server.

    Raises:
        DicomWebError: an auth file that is missing, not JSON, or holds neither a token nor a user and password.
    """
    env = [k for k in (TOKEN_ENV, USER_ENV) if os.environ.get(k)]
    if auth_file is not None:
        if env:
            logger.warning("using the credentials of --auth-file %s; %s in the environment not sent to this server",
                           auth_file, " and ".join(env))
        return _from_file(Path(auth_file))
    if os.environ.get(TOKEN_ENV):
        return Credentials(token=os.environ[TOKEN_ENV], source=TOKEN_ENV)
    if os.environ.get(USER_ENV):
        return Credentials(user=os.environ[USER_ENV], password=os.environ.get(PASSWORD_ENV, ""),
                           source=f"{USER_ENV}/{PASSWORD_ENV}")
    path = os.environ.get(AUTH_FILE_ENV)
    return _from_file(Path(path)) if path else None


def _from_file(path: Path) -> Credentials:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise DicomWebError(f"auth file {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError:
        raise DicomWebError(f"auth file {path} is not JSON; expected {{\"token\": ...}} or {{\"user\": ..., "
                            "\"password\": ...}}") from None
    if not isinstance(data, dict) or not (data.get("token") or data.get("user")):
        raise DicomWebError(f"auth file {path} holds neither a token nor a user (keys: "
                            f"{', '.join(data) if isinstance(data, dict) else type(data).__name__})")
    if path.stat().st_mode & 0o077:
        logger.warning("auth file %s can be read by other users of this machine (chmod 600 it)", path)
    if data.get("token"):
        return Credentials(token=str(data["token"]), source=str(path))
    return Credentials(user=str(data["user"]), password=str(data.get("password", "")), source=str(path))


def connect(url: str, *, auth_file: str | Path | None = None, timeout: tuple[float, float] = TIMEOUT,
            retries: int = RETRIES) -> DICOMwebClient:
    """A DICOMweb client for the root ``url`` (e.g. ``http://pacs:8042/dicom-web``).

    Raises:
        DicomWebError: a URL that is not http(s) or carries credentials; a bad auth file.
    """
    import requests
    from dicomweb_client.api import DICOMwebClient
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DicomWebError(f"{redact(url)} is not a DICOMweb URL (expected http(s)://host[:port]/path)")
    if parts.username or parts.password:
        raise DicomWebError(f"{redact(url)}: credentials do not belong in a URL (it is logged and saved); set "
                            f"{USER_ENV} and {PASSWORD_ENV}, {TOKEN_ENV}, or an auth file")
    session = requests.Session()
    retry = Retry(total=retries, connect=0, read=0, other=0, status=retries, backoff_factor=0.5,
                  status_forcelist=(429, 502, 503, 504), allowed_methods=("GET", "HEAD"), raise_on_status=False)
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    creds = credentials(auth_file)
    if creds is not None and creds.token:
        session.headers["Authorization"] = f"Bearer {creds.token}"
    elif creds is not None:
        session.auth = (creds.user or "", creds.password or "")
    client = DICOMwebClient(url.rstrip("/"), session=session, timeout=timeout)
    client.set_http_retry_params(retry=False)  # urllib3 above retries what is worth retrying, once per request
    return client


def redact(url: str) -> str:
    """``url`` without any user information (for messages and logs)."""
    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url
    host = parts.hostname or ""
    return parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")).geturl()


@contextmanager
def _server(client: DICOMwebClient, what: str) -> Iterator[None]:
    """Turn what the HTTP layer raises into one named :class:`DicomWebError`."""
    import requests

    url = redact(str(getattr(client, "base_url", "") or getattr(client, "url", "")))
    try:
        yield
    except requests.exceptions.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise DicomWebError(f"{url} refused the credentials ({status}) while {what}: set {USER_ENV} and "
                                f"{PASSWORD_ENV}, {TOKEN_ENV}, or --auth-file", server_wide=True) from None
        raise DicomWebError(f"{url} answered {status} while {what}") from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise DicomWebError(f"cannot reach {url} while {what} ({type(exc).__name__}): is the server running, and "
                            "is this its DICOMweb root (e.g. http://host:8042/dicom-web)?", server_wide=True) from None


def _value(item: dict[str, Any], tag: str) -> str:
    values = item.get(_TAGS[tag], {}).get("Value") or [""]
    return str(values[0])


def study_mammograms(client: DICOMwebClient, study_uid: str) -> list[tuple[str, str]]:
    """``(series UID, SOP instance UID)`` of every MG image of the study (QIDO-RS).

    Raises:
        DicomWebError: an unknown study, or one without mammograms (its modalities named).
    """
    with _server(client, f"searching study {study_uid}"):
        series = client.search_for_series(study_instance_uid=study_uid)
    if not series:
        raise DicomWebError(f"study {study_uid} is not on the server")
    mammo = [s for s in series if _value(s, "modality") == MG]
    if not mammo:
        found = sorted({_value(s, "modality") or "?" for s in series})
        raise DicomWebError(f"study {study_uid} holds no mammograms (modality MG); its series are {', '.join(found)}")
    out = []
    for s in mammo:
        series_uid = _value(s, "series")
        with _server(client, f"listing series {series_uid}"):
            instances = client.search_for_instances(study_instance_uid=study_uid, series_instance_uid=series_uid)
        out += [(series_uid, _value(i, "sop")) for i in instances]
    return out


def fetch_study(client: DICOMwebClient, study_uid: str, folder: str | Path) -> list[Path]:
    """Every MG image of the study saved as ``folder/<SOP Instance UID>.dcm`` (WADO-RS); files already there are
    kept (a second run fetches nothing)."""
    from mammobench.runtime import atomic_path

    folder = Path(folder)
    found = study_mammograms(client, study_uid)  # a study the server lacks leaves no folder behind
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for series_uid, sop_uid in found:
        path = folder / f"{sop_uid}.dcm"
        if not path.is_file():
            with _server(client, f"retrieving instance {sop_uid}"):
                ds = client.retrieve_instance(study_uid, series_uid, sop_uid)
            with atomic_path(path) as tmp:
                ds.save_as(str(tmp), enforce_file_format=True)
        paths.append(path)
    return paths


def store(client: DICOMwebClient, datasets: list[Any]) -> int:
    """Send ``datasets`` with STOW-RS; how many the server took.

    Raises:
        DicomWebError: the server refused some (their count and its reason).
    """
    with _server(client, f"storing {len(datasets)} instance(s)"):
        response = client.store_instances(datasets)
    failed = response.get("FailedSOPSequence") if response is not None else None
    if failed:
        raise DicomWebError(f"the server refused {len(failed)} of {len(datasets)} instance(s)")
    return len(datasets)
