"""Signing keys kept in the data dir.

Every process serving a data dir signs and verifies tokens with the same keys, so a token printed
by ``consilium token`` (or, later, issued by ``/auth/token``) is accepted by every worker. Keys are
P-256 (ES256) PEM files named by their RFC 7638 thumbprint; ``current`` names the one that signs.
Old keys stay for verification until removed, so rotation never invalidates live tokens.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey, KeySet

_CURRENT = "current"


class KeyStore:
    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def _key_files(self) -> list[Path]:
        return sorted(self.directory.glob("*.pem")) if self.directory.is_dir() else []

    def ensure(self) -> str:
        """Create a first key if there is none; return the current key id. Safe to race."""
        current = self.directory / _CURRENT
        if current.exists():
            return current.read_text().strip()
        return self.rotate(only_if_missing=True)

    def rotate(self, only_if_missing: bool = False) -> str:
        """Make a new key the signing key; previous keys keep verifying."""
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        key = ECKey.generate_key("P-256", parameters={"use": "sig", "alg": "ES256"}, private=True)
        kid = key.thumbprint()
        pem_path = self.directory / f"{kid}.pem"
        fd = os.open(pem_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.as_pem(private=True))
            fh.flush()
            os.fsync(fh.fileno())
        current = self.directory / _CURRENT
        if only_if_missing:
            # Another process may have won the race: the first ``current`` stays.
            try:
                fd = os.open(current, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pem_path.unlink()
                return current.read_text().strip()
            with os.fdopen(fd, "w") as fh:
                fh.write(kid)
            return kid
        tmp = self.directory / f".{_CURRENT}.{os.getpid()}"
        tmp.write_text(kid)
        os.replace(tmp, current)
        return kid

    def current_kid(self) -> str:
        return self.ensure()

    def signing_key(self) -> ECKey:
        kid = self.current_kid()
        return self._load(self.directory / f"{kid}.pem")

    def key_set(self) -> KeySet:
        self.ensure()
        return KeySet([self._load(p) for p in self._key_files()])

    def jwks(self) -> dict[str, Any]:
        """The public keys, as published at ``/auth/jwks``."""
        return dict(self.key_set().as_dict(private=False))

    def remove(self, kid: str) -> None:
        if kid == self.current_kid():
            raise ValueError("cannot remove the current signing key; rotate first")
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"{kid}.pem").unlink()

    @staticmethod
    def _load(path: Path) -> ECKey:
        key = ECKey.import_key(path.read_bytes(), parameters={"use": "sig", "alg": "ES256"})
        key.ensure_kid()
        return key
