"""Practitioners' signing keys and detached JWS signatures over FHIR resources.

An expert signs a consultation report with a key of their own, so that a verifier can tell who
signed, not merely that the server vouches for it. Each practitioner gets a P-256 (ES256) key on
their first signature, kept as 0600 PEM files under ``<data dir>/keys/practitioners/<id>/``
(the same file layout as the server's token keys, :class:`server.auth.keys.KeyStore`); rotation
makes a new signing key and keeps the old ones, so earlier signatures still verify. The public
keys are published as a JWKS.

The signature is a JWS in the compact serialisation with a detached payload (RFC 7515 appendix
F): ``<protected header>..<signature>``, where the payload that was signed is the canonical JSON
of the resource (keys sorted, no insignificant whitespace, UTF-8, decimals as written, without
``meta`` and ``text``: the server-owned metadata and the generated narrative are not what the
expert vouches for). Nothing here needs JOSE header extensions, so the signature is made with
``cryptography`` directly; the protected header carries ``alg`` (ES256), ``kid`` (the RFC 7638
thumbprint of the key), ``target`` (the signed ``Type/id/_history/version``) and ``sha256``
(base64url of the payload's SHA-256), the last one only so that a failed verification can say
whether the content changed or the key does not match.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from joserfc.jwk import ECKey

from server.auth.keys import KeyStore
from server.fhir.values import valid_id

ALGORITHM = "ES256"
_COORDINATE = 32  # bytes of a P-256 coordinate: an ES256 signature is r || s, 64 bytes


# -- keys ----------------------------------------------------------------------------------------

def practitioners_dir(keys_dir: Path) -> Path:
    return Path(keys_dir) / "practitioners"


def practitioner_keys(keys_dir: Path, practitioner_id: str) -> KeyStore:
    """The key store of one practitioner (nothing is created until a key is needed)."""
    if not valid_id(practitioner_id):
        raise ValueError(f"{practitioner_id!r} is not a resource id")
    return KeyStore(practitioners_dir(keys_dir) / practitioner_id)


def signing_key(keys_dir: Path, practitioner_id: str) -> ECKey:
    """The practitioner's current signing key, made on first use."""
    parent = practitioners_dir(keys_dir)
    parent.mkdir(parents=True, exist_ok=True)
    os.chmod(parent, 0o700)
    return practitioner_keys(keys_dir, practitioner_id).signing_key()


def rotate(keys_dir: Path, practitioner_id: str) -> str:
    """Make a new signing key for the practitioner; the old ones keep verifying. Returns its kid."""
    signing_key(keys_dir, practitioner_id)
    return practitioner_keys(keys_dir, practitioner_id).rotate()


def public_keys(keys_dir: Path, practitioner_id: str) -> list[ECKey]:
    """Every key the practitioner has signed with (none if they never signed)."""
    store = practitioner_keys(keys_dir, practitioner_id)
    if not store.directory.is_dir() or not any(store.directory.glob("*.pem")):
        return []
    return list(store.key_set().keys)  # type: ignore[arg-type]


def jwks(keys_dir: Path, practitioner_id: str) -> dict[str, Any]:
    """The practitioner's public keys as a JSON Web Key Set (RFC 7517 section 5)."""
    return {"keys": [dict(k.as_dict(private=False)) for k in public_keys(keys_dir,
                                                                           practitioner_id)]}


# -- canonical form ------------------------------------------------------------------------------

def _fragment(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return orjson.Fragment(str(obj))
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def canonical_json(resource: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the resource without ``meta`` and ``text``, keys sorted,
    compact, UTF-8, decimals exactly as stored."""
    content = {k: v for k, v in resource.items() if k not in ("meta", "text")}
    return orjson.dumps(content, default=_fragment, option=orjson.OPT_SORT_KEYS)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def digest(payload: bytes) -> str:
    return b64url(hashlib.sha256(payload).digest())


# -- sign and verify -----------------------------------------------------------------------------

def sign_detached(payload: bytes, key: ECKey, target: str) -> str:
    """A compact JWS with a detached payload (RFC 7515 appendix F) over ``payload``."""
    key.ensure_kid()
    header = {"alg": ALGORITHM, "kid": key.kid, "target": target, "sha256": digest(payload)}
    protected = b64url(orjson.dumps(header, option=orjson.OPT_SORT_KEYS))
    signing_input = f"{protected}.{b64url(payload)}".encode("ascii")
    private = key.private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    r, s = decode_dss_signature(private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    raw = r.to_bytes(_COORDINATE, "big") + s.to_bytes(_COORDINATE, "big")
    return f"{protected}..{b64url(raw)}"


@dataclass(frozen=True)
class Check:
    """The outcome of verifying one detached JWS."""

    valid: bool
    reason: str
    kid: str | None = None
    target: str | None = None
    #: Whether the payload differs from what was signed (None: the signature does not say).
    content_changed: bool | None = None


def header_of(jws: str) -> dict[str, Any]:
    """The protected header of a compact JWS (ValueError if it is not one)."""
    parts = jws.split(".")
    if len(parts) != 3:
        raise ValueError("a compact JWS has three parts separated by '.'")
    try:
        header = orjson.loads(b64url_decode(parts[0]))
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        raise ValueError("the JWS header is not base64url-encoded JSON") from None
    if not isinstance(header, dict):
        raise ValueError("the JWS header is not a JSON object")
    return header


def verify_detached(jws: str, payload: bytes, keys: list[ECKey]) -> Check:
    """Verify a detached compact JWS over ``payload`` with one of ``keys`` (matched by kid)."""
    try:
        header = header_of(jws)
    except ValueError as exc:
        return Check(False, f"the signature is not a compact JWS: {exc}")
    protected, embedded, signature = jws.split(".")
    kid, target = header.get("kid"), header.get("target")
    if header.get("alg") != ALGORITHM:
        return Check(False, f"the signature algorithm must be {ALGORITHM}, not "
                            f"{header.get('alg')!r}", kid, target)
    if embedded:
        return Check(False, "the JWS carries its payload; a detached signature must not",
                     kid, target)
    changed = header.get("sha256") != digest(payload) if "sha256" in header else None
    key = next((k for k in keys if _kid(k) == kid), None)
    if key is None:
        return Check(False, f"the key {kid!r} is not one of the signer's published keys",
                     kid, target, changed)
    try:
        raw = b64url_decode(signature)
    except (ValueError, binascii.Error):
        return Check(False, "the signature is not base64url", kid, target, changed)
    if len(raw) != 2 * _COORDINATE:
        return Check(False, "an ES256 signature is 64 bytes", kid, target, changed)
    der = encode_dss_signature(int.from_bytes(raw[:_COORDINATE], "big"),
                               int.from_bytes(raw[_COORDINATE:], "big"))
    public = key.public_key
    assert isinstance(public, ec.EllipticCurvePublicKey)
    try:
        public.verify(der, f"{protected}.{b64url(payload)}".encode("ascii"),
                      ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        if changed:
            return Check(False, "the content differs from what was signed", kid, target, True)
        return Check(False, f"the signature does not verify with the signer's key {kid}", kid,
                     target, changed)
    return Check(True, "the signature is valid", kid, target, False)


def _kid(key: ECKey) -> str | None:
    key.ensure_kid()
    return key.kid
