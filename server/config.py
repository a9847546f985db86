"""Settings: one object, built from the environment and the command line, passed down.

Every field can be set by an environment variable named ``CONSILIUM_<FIELD>`` (upper case);
command-line flags override the environment. Nothing reads the environment after start-up.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "CONSILIUM_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _default_workers() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("data")
    #: Store location. Empty: the embedded SQLite store under ``data_dir``. ``mongodb://…``: MongoDB.
    db: str = ""
    host: str = "127.0.0.1"
    http_port: int = 8080
    dicom_port: int = 11112
    dicom_ae_title: str = "CONSILIUM"
    mllp_port: int = 2575
    workers: int = field(default_factory=_default_workers)
    #: Authorization on the FHIR face. Off only for local development.
    auth: bool = True
    #: Public base URL of the server (``https://host/``); derived from each request when empty.
    base_url: str = ""
    log_level: str = "info"
    #: One structured line per HTTP request (no patient data, no query strings).
    access_log: bool = True
    #: Check every write against the fhir.resources R4B models too, after the R4 validator: a
    #: second opinion (no error it catches alone is known) that costs a third of a create.
    model_check: bool = False
    #: Index the API's writes in a process of their own (server.storage.sqlite_indexer), on
    #: another core; off, the server's writer indexes them.
    index_process: bool = True
    max_body_bytes: int = 64 * 1024 * 1024
    default_page_size: int = 20
    max_page_size: int = 1000
    #: Lifetime of tokens printed by ``consilium token``, in seconds.
    token_lifetime: int = 3600

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``CONSILIUM_*`` variables, then ``overrides`` (None values ignored)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _convert(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"])
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment that makes ``from_env`` rebuild these settings (for worker processes)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                value = "on" if value else "off"
            out[ENV_PREFIX + f.name.upper()] = str(value)
        return out

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "consilium.db"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def run_dir(self) -> Path:
        """Per-run scratch space (metrics files of worker processes)."""
        return self.data_dir / "run"


def _convert(name: str, type_name: Any, raw: str) -> Any:
    type_name = str(type_name)
    if type_name == "bool":
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{ENV_PREFIX}{name.upper()}: expected on/off, got {raw!r}")
    if type_name == "int":
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{ENV_PREFIX}{name.upper()}: expected an integer, got {raw!r}") from None
    if type_name == "Path":
        return Path(raw)
    return raw
