"""Optional Ed25519 signatures for bundles: who made this model, and has anything in it changed since?

The checksums inside ``bundle.json`` catch accidental or naive edits and files from another model, but
anyone who edits the description can also rewrite its checksum. A signature cannot be rewritten without
the private key: ``export --sign KEY`` writes ``bundle.sig`` (a signature over the exact bytes of
``bundle.json``, which holds the SHA-256 of every other file), and ``predict`` / ``serve --trusted-key PUB``
refuse a bundle whose signature is missing or does not verify with that public key.

Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public) made by :func:`generate_keypair`
(``mammobench keygen``); the private key is written readable by its owner only.

``bundle.sig`` is JSON: the signature and the signer's public key (so that a changed bundle is caught even by a user
who trusts nobody yet). A bundle is **verified** only when its signature verifies *and* its signer is a key the user
trusts, as ssh's ``known_hosts`` does for hosts: the public keys in the trust store (:func:`trusted_keys`: the PEM
files in ``$XDG_CONFIG_HOME/mammobench/trusted_keys/``, ``mammobench trust add KEY`` puts one there, and any file
or folder named in ``MAMMOBENCH_TRUSTED_KEYS``), or the one ``--trusted-key`` names. Every load says which
(:class:`Verification`): ``verified: signed by <name> (<fingerprint>)`` or ``NOT verified: <why>``; a signature
that does not verify is refused, never ignored; ``--require-signature`` refuses anything not verified.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mammobench.runtime import MammobenchError, atomic_write_bytes

SIGNATURE_FILE = "bundle.sig"
TRUST_ENV = "MAMMOBENCH_TRUSTED_KEYS"
SIGNATURE_FORMAT = "mammobench-ed25519-signature"


class SignatureError(MammobenchError):
    """A key that cannot be read, or a bundle signature that is missing or does not verify."""


def _crypto():  # type: ignore[no-untyped-def]
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise SignatureError("bundle signatures need the 'cryptography' package (pip install cryptography)") from exc
    return serialization, ed25519


def generate_keypair(out: str | Path, name: str = "mammobench_ed25519") -> tuple[Path, Path]:
    """Write ``<name>.pem`` (private, mode 0600) and ``<name>.pub.pem`` (public) into ``out``.

    Raises:
        SignatureError: a key of that name exists already (never overwritten).
    """
    serialization, ed25519 = _crypto()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SignatureError(f"--out {out} is a file: --out takes the folder that will hold the key pair "
                             f"({name}.pem and {name}.pub.pem); a key is never overwritten")
    private_path, public_path = out / f"{name}.pem", out / f"{name}.pub.pem"
    for path in (private_path, public_path):
        if path.exists():
            raise SignatureError(f"{path} exists; a key is never overwritten (choose another folder or --name)")
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        atomic_write_bytes(private_path, private)
        os.chmod(private_path, 0o600)
        atomic_write_bytes(public_path, public)
    except OSError as exc:
        raise SignatureError(f"cannot write the key pair into {out}: {exc.strerror or exc}") from None
    return private_path, public_path


def _read_key(path: str | Path, *, private: bool):  # type: ignore[no-untyped-def]
    serialization, ed25519 = _crypto()
    path = Path(path)
    if not path.is_file():
        raise SignatureError(f"key file {path} does not exist")
    data = path.read_bytes()
    try:
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (ValueError, TypeError) as exc:
        kind = "private" if private else "public"
        hint = ""
        if private and b"PUBLIC KEY" in data:
            hint = ": it is a public key; signing needs the private one (mammobench_ed25519.pem, not .pub.pem)"
        elif not private and b"PRIVATE KEY" in data:
            hint = ": it is a private key; give its public half (.pub.pem) and keep this one secret"
        raise SignatureError(f"{path} is not a PEM {kind} key{hint or f' ({exc})'}") from None
    wanted = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, wanted):
        raise SignatureError(f"{path} holds a {type(key).__name__}; bundles are signed with Ed25519 keys "
                             "(mammobench keygen makes a pair)")
    return key


def check_private_key(path: str | Path) -> None:
    """Raise :class:`SignatureError` unless ``path`` holds an Ed25519 private key (a public key given by mistake,
    a missing file, another key type), before anything is written."""
    _read_key(path, private=True)


def _raw_public(key) -> bytes:  # type: ignore[no-untyped-def]
    serialization, _ = _crypto()
    return bytes(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def fingerprint(key) -> str:  # type: ignore[no-untyped-def]
    """``SHA256:<base64>`` of the raw public key, as ``ssh-keygen -l`` writes one."""
    digest = hashlib.sha256(_raw_public(key)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def sign_bundle(folder: str | Path, private_key: str | Path) -> Path:
    """Sign ``folder/bundle.json`` with ``private_key``; writes ``folder/bundle.sig`` (JSON: the signature and the
    signer's public key)."""
    folder = Path(folder)
    key = _read_key(private_key, private=True)
    signature = key.sign((folder / "bundle.json").read_bytes())
    body = {"format": SIGNATURE_FORMAT, "algorithm": "ed25519", "signed": "bundle.json",
            "public_key": base64.b64encode(_raw_public(key.public_key())).decode(),
            "fingerprint": fingerprint(key.public_key()), "signature": base64.b64encode(signature).decode()}
    return atomic_write_bytes(folder / SIGNATURE_FILE, (json.dumps(body, indent=2) + "\n").encode())


@dataclass(frozen=True)
class TrustedKey:
    """A public key the user trusts: its name (the file's), fingerprint and where it was found."""

    name: str
    fingerprint: str
    path: Path
    key: object


def trust_store_dir() -> Path:
    """``$XDG_CONFIG_HOME/mammobench/trusted_keys`` (``~/.config/...`` by default)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mammobench" / "trusted_keys"


def trusted_keys() -> list[TrustedKey]:
    """Every key of the trust store (:func:`trust_store_dir`) and of ``MAMMOBENCH_TRUSTED_KEYS`` (files or folders
    separated by ``os.pathsep``).

    Raises:
        SignatureError: a file there that is not an Ed25519 public key (named), or a path that does not exist.
    """
    places: list[Path] = [trust_store_dir()] if trust_store_dir().is_dir() else []
    for item in filter(None, os.environ.get(TRUST_ENV, "").split(os.pathsep)):
        path = Path(item).expanduser()
        if not path.exists():
            raise SignatureError(f"{TRUST_ENV} names {path}, which does not exist")
        places.append(path)
    out: dict[str, TrustedKey] = {}
    for place in places:
        for path in sorted(place.glob("*.pem")) if place.is_dir() else [place]:
            key = _read_key(path, private=False)
            fp = fingerprint(key)
            out.setdefault(fp, TrustedKey(path.name.removesuffix(".pem").removesuffix(".pub"), fp, path, key))
    return list(out.values())


def trust_key(public_key: str | Path, name: str | None = None) -> TrustedKey:
    """Copy ``public_key`` into the trust store (``mammobench trust add``); a key already there is named, not
    copied twice.

    Raises:
        SignatureError: not an Ed25519 public key; another key stored under that name.
    """
    key = _read_key(public_key, private=False)
    fp = fingerprint(key)
    for known in trusted_keys():
        if known.fingerprint == fp:
            return known
    stem = name or Path(public_key).name.removesuffix(".pem").removesuffix(".pub")
    target = trust_store_dir() / f"{stem}.pub.pem"
    if target.exists():
        raise SignatureError(f"{target} holds another key already; give this one another --name")
    atomic_write_bytes(target, Path(public_key).read_bytes())
    return TrustedKey(stem, fp, target, key)


@dataclass(frozen=True)
class Verification:
    """What a bundle's signature says, said on every use: ``verified`` (a trusted key signed it) or why not."""

    status: Literal["verified", "untrusted", "unsigned"]
    signer: str = ""  # the signer's fingerprint, when the signature carries its key
    name: str = ""  # the trusted key's name
    detail: str = ""

    @property
    def verified(self) -> bool:
        return self.status == "verified"

    def line(self) -> str:
        if self.verified:
            return f"verified: signed by {self.name} ({self.signer})"
        return f"NOT verified: {self.detail}"


def check_signature(folder: str | Path, *, trusted_key: str | Path | None = None,
                    require: bool = False) -> Verification:
    """Verify ``folder``'s signature against the keys the user trusts (``trusted_key`` alone when given, else the
    trust store: :func:`trusted_keys`).

    Raises:
        SignatureError: a signature that does not verify (the bundle changed after it was signed, or the file was
            edited); with ``trusted_key`` or ``require``, a bundle that is not verified.
    """
    from cryptography.exceptions import InvalidSignature

    folder = Path(folder)
    keys = ([TrustedKey(Path(trusted_key).name, "", Path(trusted_key), _read_key(trusted_key, private=False))]
            if trusted_key is not None else trusted_keys())
    keys = [k if k.fingerprint else TrustedKey(k.name, fingerprint(k.key), k.path, k.key) for k in keys]
    sig_path = folder / SIGNATURE_FILE
    body = (folder / "bundle.json").read_bytes()
    if not sig_path.is_file():
        result = Verification("unsigned", detail=f"the bundle is not signed (no {SIGNATURE_FILE})")
    else:
        signature, embedded = _read_signature(sig_path)
        signer = None
        if embedded is not None:
            try:
                embedded.verify(signature, body)
            except InvalidSignature:
                raise SignatureError(f"bundle {folder}: {SIGNATURE_FILE} does not verify: the bundle was changed after "
                                     "it was signed. Refusing to load it.") from None
            signer = fingerprint(embedded)
            trusted = next((k for k in keys if k.fingerprint == signer), None)
        else:  # a bundle signed before bundle.sig carried its key: only a trusted key can tell
            trusted = next((k for k in keys if _verifies(k.key, signature, body)), None)
            signer = trusted.fingerprint if trusted else None
            if trusted is None and keys:
                raise SignatureError(f"bundle {folder}: {SIGNATURE_FILE} verifies with none of the {len(keys)} trusted "
                                     "key(s): the bundle was changed after it was signed, or signed by a key you do not "
                                     "trust. Refusing to load it.")
        if trusted is not None:
            result = Verification("verified", signer or trusted.fingerprint, trusted.name)
        elif signer:
            result = Verification("untrusted", signer, detail=f"signed by {signer}, a key you do not trust (mammobench "
                                  "trust add KEY.pub.pem, or --trusted-key KEY.pub.pem, once you know whose it is)")
        else:
            result = Verification("untrusted", detail="signed, but no trusted key to check it with (mammobench trust "
                                  "add KEY.pub.pem, or --trusted-key)")
    if not result.verified and (trusted_key is not None or require):
        asked = f"--trusted-key {trusted_key}" if trusted_key is not None else "--require-signature"
        raise SignatureError(f"bundle {folder} is {result.line()}; {asked} asks for a signature by a trusted key. "
                             "Refusing to load it.")
    return result


def _verifies(key, signature: bytes, body: bytes) -> bool:  # type: ignore[no-untyped-def]
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(signature, body)
    except InvalidSignature:
        return False
    return True


def _read_signature(path: Path):  # type: ignore[no-untyped-def]
    """``(signature, embedded public key or None)`` of a ``bundle.sig`` (JSON, or the raw 64 bytes of old bundles).

    Raises:
        SignatureError: neither.
    """
    _, ed25519 = _crypto()
    data = path.read_bytes()
    if len(data) == 64:
        return data, None
    try:
        body = json.loads(data)
        if body.get("format") != SIGNATURE_FORMAT or body.get("algorithm") != "ed25519":
            raise ValueError(f"format {body.get('format')!r}")
        key = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(body["public_key"], validate=True))
        return base64.b64decode(body["signature"], validate=True), key
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SignatureError(f"{path} is not a bundle signature ({exc}); the bundle was damaged or edited. Refusing "
                             "to load it.") from None


def verify_bundle(folder: str | Path, public_key: str | Path) -> None:
    """Refuse ``folder`` unless ``public_key`` signed it (:func:`check_signature` with ``trusted_key``).

    Raises:
        SignatureError: no signature, or one that does not verify with that key.
    """
    check_signature(folder, trusted_key=public_key)
