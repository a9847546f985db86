"""Bearer tokens: ES256-signed JWTs made with the data dir's keys.

A signature check costs ~70-100 µs, more than a whole read. Verified tokens are therefore cached
(by their exact text) until they expire, so a client pays for the check once per token.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from server.auth.keys import KeyStore
from server.auth.scopes import Principal, ScopeError

ISSUER = "consilium"
AUDIENCE = "consilium"
_CACHE_LIMIT = 10_000


class InvalidToken(Exception):
    pass


class TokenService:
    def __init__(self, keys: KeyStore, clock: Any = time.time):
        self.keys = keys
        self.clock = clock
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._key_set: KeySet | None = None

    def issue(self, subject: str, scope: str, lifetime: int = 3600,
              **claims: Any) -> str:
        now = int(self.clock())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "scope": scope,
                   "iat": now, "exp": now + lifetime, "jti": secrets.token_urlsafe(12), **claims}
        key = self.keys.signing_key()
        return jwt.encode({"alg": "ES256", "typ": "JWT", "kid": key.kid}, payload, key)

    def verify(self, token: str) -> Principal:
        hit = self._cache.get(token)
        if hit is not None:
            principal, exp = hit
            if exp > self.clock():
                return principal
            del self._cache[token]
            raise InvalidToken("token expired")
        principal, exp = self._verify_signature(token)
        if len(self._cache) >= _CACHE_LIMIT:
            self._evict()
        self._cache[token] = (principal, exp)
        return principal

    def _evict(self) -> None:
        now = self.clock()
        for tok in [t for t, (_, exp) in self._cache.items() if exp <= now]:
            del self._cache[tok]
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()

    def _verify_signature(self, token: str) -> tuple[Principal, float]:
        try:
            decoded = jwt.decode(token, self._keys())
        except (JoseError, ValueError) as exc:
            # A key added by rotation in another process: reload once.
            self._key_set = None
            try:
                decoded = jwt.decode(token, self._keys())
            except (JoseError, ValueError):
                raise InvalidToken(f"token rejected: {exc}") from None
        claims = decoded.claims
        if decoded.header.get("alg") != "ES256":
            raise InvalidToken("token must be signed with ES256")
        now = self.clock()
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= now:
            raise InvalidToken("token expired")
        if claims.get("nbf", 0) > now + 60:
            raise InvalidToken("token not yet valid")
        if claims.get("iss") != ISSUER or claims.get("aud") != AUDIENCE:
            raise InvalidToken("token was not issued for this server")
        try:
            principal = Principal.from_scope(
                str(claims.get("sub", "")), str(claims.get("scope", "")),
                client_id=claims.get("client_id"), fhir_user=claims.get("fhirUser"),
                patient=claims.get("patient"))
        except ScopeError as exc:
            raise InvalidToken(str(exc)) from None
        return principal, float(exp)

    def _keys(self) -> KeySet:
        if self._key_set is None:
            self._key_set = self.keys.key_set()
        return self._key_set
