"""Optional Ed25519 signatures for bundles: who made this model, and has anything in it changed since?

The checksums inside ``bundle.json`` catch accidental or naive edits and files from another model, but
anyone who edits the description can also rewrite its checksum. A signature cannot be rewritten without
the private key: ``export --sign KEY`` writes ``bundle.sig`` (a signature over the exact bytes of
``bundle.json``, which holds the SHA-256 of every other file), and ``predict`` / ``serve --trusted-key PUB``
refuse a bundle whose signature is missing or does not verify with that public key.

Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public) made by :func:`generate_keypair`
(``mammobench keygen``); the private key is written readable by its owner only.
"""

from __future__ import annotations

import os
from pathlib import Path

from mammobench.runtime import MammobenchError, atomic_write_bytes

SIGNATURE_FILE = "bundle.sig"


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


def sign_bundle(folder: str | Path, private_key: str | Path) -> Path:
    """Sign ``folder/bundle.json`` with ``private_key``; writes ``folder/bundle.sig``."""
    folder = Path(folder)
    key = _read_key(private_key, private=True)
    signature = key.sign((folder / "bundle.json").read_bytes())
    return atomic_write_bytes(folder / SIGNATURE_FILE, signature)


def verify_bundle(folder: str | Path, public_key: str | Path) -> None:
    """Check ``bundle.sig`` against ``bundle.json`` and a trusted public key.

    Raises:
        SignatureError: no signature, or one that does not verify (the bundle was changed after signing,
            or signed with another key).
    """
    from cryptography.exceptions import InvalidSignature

    folder = Path(folder)
    key = _read_key(public_key, private=False)
    sig = folder / SIGNATURE_FILE
    if not sig.is_file():
        raise SignatureError(f"bundle {folder} is not signed (no {SIGNATURE_FILE}) but --trusted-key {public_key} asks "
                             "for a signature; re-export it with --sign")
    try:
        key.verify(sig.read_bytes(), (folder / "bundle.json").read_bytes())
    except InvalidSignature:
        raise SignatureError(f"bundle {folder}: the signature does not verify with {public_key}: the bundle was changed "
                             "after it was signed, or signed with another key. Refusing to load it.") from None
