"""``consilium import``: load NDJSON and Bundle files into the store, fast and in constant memory.

Sources are read as streams: NDJSON line by line (``.ndjson``, ``.ndjson.gz``), Bundle files
(``.json``) entry by entry with an incremental parser, so memory does not grow with the file.
Files are cut into chunks of lines, which run on from one file into the next, and a pool of
worker processes takes them in turn. A worker
parses, validates and indexes its chunk (validation is the R4 validator of
server.fhir.validation; its second opinion from the fhir.resources R4B models, three times its
cost, is added by ``model_check``), then writes it to the store as one transaction, in file order:
chunk k is committed after chunk k - 1, so a resource given twice ends as its later line says.
While one worker writes, the other prepares its next chunk, so both cores work at once. A
transaction, batch or history Bundle (a whole file, or one NDJSON line) is processed by the
importing process, in its turn, as the FHIR API would process it (server.fhir.transaction),
references and conditionals included; a history is replayed oldest first.

A rejected line never stops the good ones, unless ``atomic``: then the whole import is one store
transaction and the first rejected line leaves the store exactly as it was.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import gc
import gzip
import hashlib
import heapq
import io
import itertools
import logging
import multiprocessing
import multiprocessing.pool
import os
import queue
import re
import select
import signal
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import ijson
import ijson.backends.python as ijson_python
import orjson

from server.fhir import codec
from server.fhir.errors import FhirError
from server.fhir.references import URNS, check_unconditional, rewrite
from server.storage.base import Serialized, instant

log = logging.getLogger(__name__)

#: Lines per unit of work handed to a worker process, and so resources per store transaction
#: (``consilium import --chunk``). A commit writes every page it touched once, and index rows
#: land all over the index B-trees, so the larger the commit, the more of its rows share pages:
#: at a million resources, chunks of 20,000 write half as much as chunks of 2,000, and import
#: 15-20 % faster. A chunk of large resources ends sooner, at CHUNK_BYTES of JSON (NDJSON lines,
#: or a Bundle file's entries, uncompressed), so that memory stays bounded whatever they hold.
CHUNK = 20000
CHUNK_BYTES = 64 << 20
#: A batch Bundle file's entries go in slices of this many, each a batch of its own: their
#: entries are independent (http.html#transaction), so the slices are the same batch, and the
#: file is not read whole.
BATCH_SLICE = 1000
_BUNDLE_KINDS = ("transaction", "batch", "history")
#: The Bundles whose entries are imported one by one (a document or message is one resource).
_ENTRY_KINDS = ("collection", "searchset", "transaction-response", "batch-response")


@dataclass
class Rejected:
    source: str
    line: int  # line of an NDJSON file, or entry number (1-based) of a Bundle file
    message: str


@dataclass
class _Source:
    """The items of a chunk read from one file."""
    name: str
    counting: _Counting
    items: int = 0
    read: int = 0  # bytes of the file read once the chunk was (its items, and a buffer more)
    last: int = 0  # the line (entry) number of the chunk's last item from the file


#: Rejected lines a report keeps (for the summary); the others are counted, and passed on.
LISTED = 1000


@dataclass
class Report:
    imported: int = 0
    #: Of those imported, the resources stored already as they are (not written again).
    unchanged: int = 0
    bundles: int = 0
    rejected_count: int = 0
    seconds: float = 0.0
    interrupted: bool = False  # stopped (Importer.stop) before it wrote everything
    #: The last line of stdin in the chunks written: the lines after it, read or not, were not.
    stdin_through: int = 0
    #: Where every rejected line goes too (``consilium import --rejects FILE``).
    sink: Callable[[Rejected], None] | None = None
    #: The place of each file among those imported, which orders the rejected lines.
    order: dict[str, int] = field(default_factory=dict)
    #: The first LISTED rejected lines in file order (memory does not grow with a file of bad
    #: lines), as a heap whose top is the last of them.
    _listed: list[tuple[int, int, int, Rejected]] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def rejected(self) -> list[Rejected]:
        """The first LISTED rejected lines, in file order."""
        return [r for *_, r in sorted(self._listed, reverse=True)]

    @property
    def rate(self) -> float:
        return self.imported / self.seconds if self.seconds else 0.0

    def count(self, counts: Counts) -> None:
        self.imported += counts[0]
        self.unchanged += counts[1]

    def reject(self, source: str, line: int, message: str) -> None:
        """Note a rejected line (from the reading thread or the importing one); its message
        on one line, as --rejects lists them (FILE:LINE: why)."""
        r = Rejected(source, line, " ".join(message.split()))
        with self._lock:
            key = (-self.order.get(source, len(self.order)), -line, -self.rejected_count, r)
            self.rejected_count += 1
            if len(self._listed) < LISTED:
                heapq.heappush(self._listed, key)
            elif key > self._listed[0]:  # before the last listed: it takes its place
                heapq.heapreplace(self._listed, key)
            if self.sink is not None:
                self.sink(r)


# -- reading ----------------------------------------------------------------------------------

class _Counting(io.RawIOBase):
    """A binary stream that counts the bytes read from the one underneath (for progress, and
    for the size of a chunk of Bundle entries)."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.raw.close()
        super().close()

    def readinto(self, b: Any) -> int:
        n = self.raw.readinto(b)  # type: ignore[attr-defined]
        self.count += n or 0
        return n or 0


#: The file name that reads stdin (NDJSON only: it is read once), and its name in reports.
STDIN, STDIN_NAME = "-", "<stdin>"


def source_name(path: Path) -> str:
    return STDIN_NAME if str(path) == STDIN else str(path)


class _Stopped(Exception):
    """The import was stopped while stdin had nothing to read."""


class _Stdin(io.RawIOBase):
    """stdin's bytes as they come (a pipe's, not waiting for a buffer to fill); given up once
    ``stop()`` says so while nothing comes (a service manager's SIGTERM to the importer alone,
    its producer idle)."""

    def __init__(self, stop: Callable[[], bool]):
        self.fd = sys.stdin.fileno()
        self.stop = stop

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not select.select([self.fd], [], [], 0.2)[0]:
            if self.stop():
                raise _Stopped
        return os.readv(self.fd, [b])


def _open(path: Path, stop: Callable[[], bool] = lambda: False) -> tuple[IO[bytes], _Counting]:
    """The file's bytes (uncompressed: gzip is known by its content, whatever the name; another
    compression is refused, naming it), past a UTF-8 byte order mark that starts them (as some
    Windows tools write), with the counter of the bytes read from the file. ``stop``: stdin's
    reading ends (:class:`_Stopped`) once it says so while nothing comes."""
    raw: Any = _Stdin(stop) if str(path) == STDIN else open(path, "rb")  # noqa: SIM115
    counting = _Counting(raw)  # (the returned stream owns it)
    stream: IO[bytes] = io.BufferedReader(counting, 1 << 20)
    with contextlib.suppress(*_UNREADABLE):  # reported when read
        head = stream.peek(6)[:6]  # type: ignore[attr-defined]
        for magic, name in _COMPRESSED.items():
            if head.startswith(magic):
                stream.close()
                raise _NotImportable(f"compressed with {name}: decompress it, or compress it "
                                     "with gzip, which is read as it is")
    if stream.peek(2)[:2] == _GZIP:  # type: ignore[attr-defined]
        stream = gzip.GzipFile(fileobj=stream)  # type: ignore[assignment]
    with contextlib.suppress(*_UNREADABLE):  # reported when read
        if stream.peek(3)[:3] == _BOM:  # type: ignore[attr-defined]
            stream.read(3)
    return stream, counting


_BOM = b"\xef\xbb\xbf"
_GZIP = b"\x1f\x8b"
#: How the other compressions start: named rather than read as garbage.
_COMPRESSED = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd",
               b"PK\x03\x04": "zip"}


def _is_ndjson(path: Path) -> bool:
    """Named so (.ndjson, .jsonl), or, whatever its name, a file whose first line is a JSON
    object and which holds more after it."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".ndjson", ".jsonl")) or str(path) == STDIN:
        return True
    stream, _ = _open(path)
    with stream, contextlib.suppress(*_UNREADABLE):
        first = _next_line(stream)
        if not first.endswith(b"\n"):  # one line (or a longer one than is sniffed)
            return False
        try:
            if not isinstance(orjson.loads(first), dict):
                return False
        except orjson.JSONDecodeError:
            return False
        return _next_line(stream).lstrip().startswith(b"{")
    return False


def _first_line_checked(stream: IO[bytes]) -> Iterator[bytes]:
    """The lines of a stream read once (stdin), refused at once unless the first that is not
    blank is a JSON object: a JSON document on several lines would otherwise be rejected line
    by line."""
    blank = []  # given back, so that lines keep their numbers
    try:
        while (first := stream.readline()) and not first.strip():
            blank.append(first)
    except _UNREADABLE as exc:
        raise _NotImportable(f"cannot be read: {exc}") from None
    try:
        ok = not first or isinstance(orjson.loads(first), dict)
    except orjson.JSONDecodeError:
        ok = False
    if not ok:
        raise _NotImportable("stdin is read as NDJSON (one resource a line), and its first "
                             "line is not a JSON object; name a JSON file to import it")
    return itertools.chain(blank, [first], stream)


def _next_line(stream: IO[bytes]) -> bytes:
    """The next line that is not blank (as much of it as is sniffed); b"" at the end."""
    while (line := stream.readline(_SNIFF)) and not line.strip():
        pass
    return line


#: How much of a file's first line is read to tell NDJSON from a JSON document.
_SNIFF = 64 << 20


class Unreadable:
    """An entry of a Bundle file that is rejected as it is read (it goes to a worker to be
    reported in its place)."""

    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message


Item = tuple[int, "bytes | Unreadable"]  # (line or entry number, the line or entry's resource)


#: What reading a damaged file raises: a gzip file cut short or not gzip at all.
_UNREADABLE = (EOFError, OSError, zlib.error)


class _NotImportable(Exception):
    """A JSON file that is neither a resource nor a Bundle, or not JSON at all."""


def _json_kind(path: Path) -> str:
    """What a JSON file holds: ``transaction`` or ``batch`` (a Bundle processed whole),
    ``entries`` (a Bundle of another type, streamed entry by entry) or ``resource``. The
    members may come in any order: a Bundle's type is looked for past its entries too."""
    stream, _ = _open(path)
    resource_type = bundle_type = None
    with stream:
        try:
            for i, (prefix, event, value) in enumerate(ijson.parse(stream)):
                if i == 0 and event != "start_map":
                    raise _NotImportable("not a JSON object: a JSON file holds one resource or "
                                         "a Bundle (NDJSON: one resource a line)")
                if prefix == "resourceType" and event == "string":
                    resource_type = value
                    if value != "Bundle":
                        return "resource"
                elif prefix == "type" and event == "string":
                    bundle_type = value
                if resource_type and bundle_type:
                    break
        except ijson.JSONError as exc:
            raise _NotImportable(f"invalid JSON: {exc}") from None
        except _UNREADABLE as exc:
            raise _NotImportable(f"cannot be read: {exc}") from None
    if resource_type is None:
        raise _NotImportable("not a FHIR resource (no resourceType)")
    if bundle_type in _BUNDLE_KINDS:
        return bundle_type
    if bundle_type in ("document", "message"):  # the record itself: stored whole
        return "resource"
    if bundle_type not in _ENTRY_KINDS:
        raise _NotImportable(f"Bundle.type {bundle_type!r} is not a Bundle type (document, "
                             "message, transaction, batch, history, searchset, collection …)")
    return "entries"


class _Escapes(_Counting):
    """A counting stream that also notes whether what is read through it holds a \\u escape
    of a surrogate (which the fast JSON reader turns into "?" when it stands alone)."""

    _SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")

    def __init__(self, raw: IO[bytes]):
        super().__init__(raw)
        self.seen = False
        self._tail = b""

    def readinto(self, b: Any) -> int:
        n = super().readinto(b)
        if n and not self.seen:
            data = self._tail + bytes(b[:n])
            self.seen = self._SURROGATE.search(data) is not None
            self._tail = data[-5:]
        return n


def _bundle_items(stream: IO[bytes], links: dict[str, str],
                  escapes: bool = False) -> Iterator[tuple[Item, int]]:
    """The entries' resources as JSON, each with the bytes of JSON read up to it (uncompressed).
    The references to entries' urn:uuid or urn:oid fullUrls become the ``Type/id`` that
    ``links`` gives them (:func:`_urn_links`), and an entry without an id gets the one given
    there. A searchset's OperationOutcome (search.mode outcome) is about the search, not data:
    left out."""
    json = _Counting(stream)
    # The slower reader keeps a lone surrogate as it is, so that it is refused, not changed.
    read = ijson_python.items if escapes else ijson.items
    for number, entry in enumerate(read(json, "entry.item"), 1):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and isinstance(entry.get("search"), dict) \
                and entry["search"].get("mode") == "outcome":
            continue
        yield (number, _entry_json(entry, resource, links)), json.count


def _entry_json(entry: Any, resource: Any, links: dict[str, str]) -> bytes | Unreadable:
    """An entry's resource, its references to other entries resolved, as JSON (what a worker
    reads, as it reads a line; a decimal keeps its digits)."""
    if not isinstance(resource, dict):
        return Unreadable("not a FHIR resource (the entry has no resource)")
    full_url = entry.get("fullUrl")
    if full_url is not None and not isinstance(full_url, str):
        return Unreadable(f"the entry's fullUrl must be a string, not {type(full_url).__name__}")
    try:
        if links:
            link = links.get(full_url) if full_url is not None else None
            if link is not None and "id" not in resource:
                resource["id"] = link.split("/", 1)[1]
            rewrite(resource, links.get)
        return codec.dumps(resource)
    except (TypeError, ValueError, RecursionError) as exc:  # orjson: nested too deeply
        return Unreadable(f"cannot be imported: {exc}")


def _envelope(path: Path) -> tuple[dict[str, Any], int, bool]:
    """A Bundle file's members but its entries, how many entries it has, and whether it holds
    escaped surrogates (:class:`_Escapes`): one pass, the entries not kept."""
    envelope: dict[str, Any] = {}
    count = 0
    key, builder = None, None
    stream, _ = _open(path)
    escapes = _Escapes(stream)
    with stream, contextlib.suppress(ijson.JSONError, *_UNREADABLE):  # reported when read
        for prefix, event, value in ijson.parse(escapes):
            if prefix == "entry" and event not in ("start_array", "end_array"):
                raise _NotImportable("Bundle.entry must be a JSON array")
            if prefix == "" and event in ("map_key", "end_map"):
                if builder is not None:
                    envelope[key] = builder.value  # type: ignore[index]
                key, builder = value, None if value == "entry" else ijson.ObjectBuilder()
            elif prefix == "entry.item" and event not in ("map_key", "end_map", "end_array"):
                count += 1
            elif builder is not None:
                builder.event(event, value)
    return envelope, count, escapes.seen


def _batch_slices(stream: IO[bytes], envelope: dict[str, Any],
                  escapes: bool) -> Iterator[tuple[Item, int]]:
    """A batch Bundle file's entries in batches of :data:`BATCH_SLICE`, each numbered by its
    first entry, with the bytes of JSON read up to it (uncompressed). An entry that cannot be
    imported (a lone surrogate is not text) is an item of its own, to be refused; so is the
    rest of a file that breaks (from the first entry of the slice it breaks in)."""
    json = _Counting(stream)
    read = ijson_python.items if escapes else ijson.items
    entries = enumerate(read(json, "entry.item"), 1)
    first, group = 1, []
    try:
        for number, entry in entries:
            try:
                group.append(codec.dumps(entry))
            except (TypeError, ValueError, RecursionError) as exc:  # orjson: nested too deeply
                if group:
                    yield (first, _batch_of(envelope, group)), json.count
                yield (number, Unreadable(f"cannot be imported: {exc}")), json.count
                first, group = number + 1, []
                continue
            if len(group) == BATCH_SLICE:
                yield (first, _batch_of(envelope, group)), json.count
                first, group = number + 1, []
    except (ijson.JSONError, *_UNREADABLE) as exc:
        yield (first, Unreadable(f"cannot be read from entry {first} on: {exc}")), json.count
        return
    if group:
        yield (first, _batch_of(envelope, group)), json.count


def _batch_of(envelope: dict[str, Any], entries: list[bytes]) -> bytes:
    """A batch Bundle of the file's envelope and these entries (JSON each)."""
    head = codec.dumps({**envelope, "entry": []})  # ends with "entry":[]}
    return head[:-2] + b",".join(entries) + b"]}"


def _check_envelope(envelope: dict[str, Any]) -> None:
    """A Bundle's members but its entries are those of a valid Bundle, as the API checks them."""
    from server.fhir.transaction import check_envelope

    try:
        check_envelope(envelope)
    except FhirError as exc:
        raise _NotImportable(f"{envelope.get('type')} Bundle rejected: {exc}") from None


_NOT_ATOMIC = ("transaction, batch and history Bundles cannot be part of an --atomic import; "
               "import them without it")


def _max_entries() -> int:
    from server.fhir.transaction import MAX_ENTRIES

    return MAX_ENTRIES


def _too_many(kind: str) -> str:
    return (f"a {kind} Bundle may have at most {_max_entries()} entries, as through the API (it is "
            "processed whole, in memory): import more resources as NDJSON or as a collection "
            "Bundle, with --atomic for all or nothing")


def _urn_links(path: Path) -> tuple[dict[str, str], bool]:
    """A first pass over a Bundle (of a type whose entries are imported one by one): the
    ``Type/id`` each entry with a urn:uuid or urn:oid fullUrl will have (a new id when its
    resource has none), so that references between the entries hold (bundle.html#references);
    empty when no entry has one. Only the fullUrls and ids are read, not the resources. And
    whether the file holds escaped surrogates (:class:`_Escapes`)."""
    from server.fhir.structures import structures

    members = {*structures().types["Bundle"].elements, "resourceType"}
    links: dict[str, str] = {}
    full_url = type_ = id_ = None
    stream, _ = _open(path)
    escapes = _Escapes(stream)
    with stream, contextlib.suppress(ijson.JSONError, *_UNREADABLE):  # reported when read
        for prefix, event, value in ijson.parse(escapes):
            if prefix == "" and event == "map_key" and value.removeprefix("_") not in members:
                raise _NotImportable(f"unknown element {value!r} (not in R4 Bundle)")
            if prefix == "entry" and event not in ("start_array", "end_array"):
                raise _NotImportable("Bundle.entry must be a JSON array")
            if prefix == "entry.item" and event == "map_key" and value == "request":
                raise _NotImportable("Bundle.entry.request is only for a batch, transaction or "
                                     "history Bundle (bdl-3)")
            if prefix == "entry.item" and event in ("start_map", "end_map"):
                if event == "end_map" and isinstance(full_url, str) and \
                        full_url.startswith(URNS) and isinstance(type_, str):
                    links[full_url] = f"{type_}/{id_ if isinstance(id_, str) else _urn_id(full_url)}"
                full_url = type_ = id_ = None
            elif prefix == "entry.item.fullUrl":
                full_url = value
            elif prefix == "entry.item.resource.resourceType":
                type_ = value
            elif prefix == "entry.item.resource.id":
                id_ = value
    return links, escapes.seen


def _urn_id(urn: str) -> str:
    """The id of an entry known by a urn:uuid or urn:oid fullUrl (and no id of its own): the
    uuid or oid itself, so that importing the file again finds it stored."""
    from server.fhir.values import valid_id
    from server.fhir.writes import new_id

    name = urn.split(":", 2)[2]
    return name if valid_id(name) else new_id()


def _creates_as_updates(entries: list[Any]) -> list[Any]:
    """An imported transaction's or batch's creates (POST, without ``ifNoneExist``) as updates
    of the ids :func:`_urn_id` gives their ``urn:`` fullUrls, or else (without a fullUrl)
    derived from the entry, its content and place: importing the file again, which is how an
    interrupted import is completed, finds them stored instead of making them again. A create
    whose fullUrl is a RESTful URL, which other entries' relative references may name, is
    left as it is."""
    out = []
    for at, entry in enumerate(entries):
        request = entry.get("request") if isinstance(entry, dict) else None
        resource = entry.get("resource") if isinstance(entry, dict) else None
        full = entry.get("fullUrl") if isinstance(entry, dict) else None
        if isinstance(request, dict) and request.get("method") == "POST" \
                and not request.get("ifNoneExist") and isinstance(resource, dict) \
                and request.get("url") == resource.get("resourceType") \
                and (full is None or isinstance(full, str) and full.startswith(URNS)):
            id_ = _urn_id(full) if full else _content_id({"entry": at, "resource": resource})
            entry = {**entry, "resource": {**resource, "id": id_},
                     "request": {**request, "method": "PUT", "url": f"{request['url']}/{id_}"}}
        out.append(entry)
    return out


def _content_id(resource: dict[str, Any]) -> str:
    """The id of a line (or entry) without one: derived from its content (however its JSON is
    written), so that importing the same file again finds it stored instead of making it
    again. Identical resources without ids are one resource."""
    canonical = orjson.dumps(resource, default=codec.json_default, option=orjson.OPT_SORT_KEYS)
    return str(uuid.uuid5(_CONTENT_IDS, hashlib.sha256(canonical).hexdigest()))


#: The namespace of the ids derived from content (:func:`_content_id`).
_CONTENT_IDS = uuid.UUID("5d5b0f3e-8f0a-4f5c-9a53-6c6f6e73696c")


def _ndjson_sized(stream: Iterable[bytes]) -> Iterator[tuple[Item, int]]:
    """The lines, each with the bytes of the lines up to it."""
    size = 0
    for number, line in enumerate(stream, 1):
        size += len(line)
        if line.strip():
            yield (number, line), size


# -- preparing (in worker processes) ---------------------------------------------------------

Prepared = tuple[str, int, Any]  # ("ok", n, WriteItem) | ("err", n, message)
#                                  | ("bundle", n, bundle)


def _prepare_one(number: int, raw: bytes | Unreadable, models: bool) -> Prepared:
    """A line or entry: prepared, or its rejection; never an exception, which would stop the
    import (one of ours is logged, and the line reported)."""
    try:
        return _prepare(number, raw, models)
    except Exception as exc:
        log.exception("import.line.failed", extra={"event": "import.line.failed",
                                                    "line": number})
        return "err", number, f"cannot be imported: an internal error ({type(exc).__name__})"


def _prepare(number: int, raw: bytes | Unreadable, models: bool) -> Prepared:
    from server.fhir.prepare import prepare
    from server.fhir.values import valid_id

    if isinstance(raw, Unreadable):
        return "err", number, raw.message
    try:
        resource = codec.loads(raw)
    except codec.JsonError as exc:
        return "err", number, f"invalid JSON: {exc}"
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        return "err", number, "not a FHIR resource (no resourceType)"
    type_ = resource["resourceType"]
    if type_ == "Bundle" and resource.get("type") in _BUNDLE_KINDS:
        return "bundle", number, resource
    id_ = resource.get("id")
    if id_ is None:
        id_ = _content_id(resource)
    elif not isinstance(id_, str) or not valid_id(id_):
        return "err", number, f"invalid id {id_!r}"
    try:
        from server.fhir.structures import structures

        if not structures().is_resource_type(type_):
            return "err", number, f"unknown resource type {type_!r}"
        indexes = prepare(resource, type_, models=models, index=True)
        # A conditional reference holds a '?': a line without one (nor an escape) has none.
        if b"?" in raw or b"\\u" in raw:
            check_unconditional(resource)
    except FhirError as exc:
        return "err", number, "; ".join(
            f"{i.diagnostics}" + (f" ({', '.join(i.expression)})" if i.expression else "")
            for i in exc.issues if i.severity in ("error", "fatal"))[:2000]
    # The store writes the JSON as it is (Serialized), without serialising the dict again.
    rest = {k: v for k, v in resource.items() if k not in ("resourceType", "id", "meta")}
    return "ok", number, (type_, id_, Serialized(resource.get("meta"), codec.dumps(rest)),
                          {k: v for k, v in (indexes or {}).items() if v})


def _prepare_chunk(job: tuple[int, list[Item], bool]) -> list[Prepared]:
    _, chunk, models = job
    return [_prepare_one(n, raw, models) for n, raw in chunk]


def _warm_up() -> None:
    from server.app import warm_up

    warm_up()


def _ignore_interrupts() -> None:
    """In a worker: Ctrl-C reaches the whole process group, and a service manager's stop
    (systemd's) sends SIGTERM to every process of the service; the importing process decides
    (Importer.stop). A worker dying mid-chunk would leave the pool waiting for its result."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform == "linux":  # and end with the importing process, however it ends
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        parent = multiprocessing.parent_process()
        if parent is not None and os.getppid() != parent.pid:  # it ended before that
            os._exit(1)


@contextlib.contextmanager
def _pool(ctx: Any, workers: int, initializer: Callable[..., None],
          initargs: tuple[Any, ...], unblock: Callable[[], None]) -> Iterator[Any]:
    """A pool of workers that ignore SIGTERM (:func:`_ignore_interrupts`), so not ended by
    ``Pool.terminate``'s: once the work is done they are let go; on a failure (a worker that
    died, the store's, or one of ours), killed, after ``unblock`` has let the pool's thread
    that reads the jobs end. A killed worker may hold a lock of the pool's queues, on which
    ``Pool.terminate`` (and the pool's finalizer at exit) would wait for ever: the pool's own
    thread stops replacing workers (it looks every 0.1 s), those left are killed, and the
    process ends without more (cmd_import)."""
    pool = ctx.Pool(workers, initializer=initializer, initargs=initargs)
    try:
        yield pool
    except BaseException:
        unblock()
        pool._worker_handler._state = multiprocessing.pool.TERMINATE
        time.sleep(0.3)
        for child in multiprocessing.active_children():
            child.kill()
        raise
    pool.close()
    pool.join()


_PR_SET_PDEATHSIG = 1  # prctl(2)


class WorkerDied(Exception):
    """A worker process of the pool died, and the chunk it held with it."""


def _started(started: Any) -> None:
    """In a worker: count it among the workers the pool started (``_watched``)."""
    with started.get_lock():
        started.value += 1


def _watched(results: Any, started: Any, workers: int) -> Iterator[Any]:
    """The results of ``pool.imap`` in order. A pool replaces a worker that dies (the kernel's
    out-of-memory killer kills the largest process) but waits for its chunk for ever: a worker
    started beyond the first ``workers`` fails the import instead."""
    while True:
        try:
            yield results.next(timeout=0.5)
        except StopIteration:
            return
        except multiprocessing.TimeoutError:
            if started.value > workers:
                raise WorkerDied(
                    "a worker process died, and the chunk it held with it (was it killed? the "
                    "kernel's out-of-memory killer does so: a smaller --chunk, or fewer "
                    "--workers, need less memory)") from None


def _prepare_worker(started: Any) -> None:
    _ignore_interrupts()
    _warm_up()
    _started(started)


class _Turns:
    """Chunk k is written once chunks 0 … k - 1 are: a counter shared by the processes, looked
    at every millisecond (a Condition would block its notifier for ever on a waiter that
    died)."""

    def __init__(self, ctx: Any):
        self.next = ctx.Value("q", 0)
        self.halted = ctx.Value("b", 0)

    def wait(self, k: int) -> None:
        while self.next.value != k:
            time.sleep(0.001)

    def done(self, k: int) -> None:
        self.next.value = k + 1

    def halt(self) -> None:
        """The import stopped within a chunk: the chunks after it are not written (in their
        turn, what follows it would otherwise be written without it)."""
        self.halted.value = 1


_worker: dict[str, Any] = {}  # the store and turns of a writing worker process


def _open_writer(settings: Any, turns: _Turns, chunk: int, writers: int, started: Any) -> None:
    from server.storage import open_store

    _ignore_interrupts()
    _warm_up()
    _started(started)
    # Rows and tuples by the million, and no reference cycles worth chasing during a chunk:
    # what warm-up loaded is set aside, and the young generations are collected once a chunk.
    gc.freeze()
    gc.disable()
    _worker["store"] = open_store(settings, bulk=chunk, writers=writers)
    _worker["turns"] = turns
    _worker["loop"] = asyncio.new_event_loop()


#: (what was written, the rejected lines) | (None, everything), each with its place in the chunk
Written = tuple["Counts | None", list[tuple[int, Prepared]]]


def _prepare_and_write(job: tuple[int, list[Item], bool]) -> Written:
    """Prepare a chunk and write it in its turn. A chunk holding a transaction or batch Bundle
    goes back whole to the importing process, which processes it in its turn."""
    k = job[0]
    prepared = _prepare_chunk(job)
    if any(kind == "bundle" for kind, _, _ in prepared):
        return None, list(enumerate(prepared))
    items = [payload for kind, _, payload in prepared if kind == "ok"]
    rejected = [(i, p) for i, p in enumerate(prepared) if p[0] == "err"]
    del prepared
    written = _write_in_turn(k, items)
    # The writer thread may hold the list a moment longer: what it holds goes now, before the
    # collection, which would otherwise walk every object of the chunk.
    items.clear()
    gc.collect(1)
    return written, rejected


def _write_in_turn(k: int, items: list[Any]) -> Counts:
    turns: _Turns = _worker["turns"]
    turns.wait(k)
    try:
        if not items or turns.halted.value:
            return 0, 0
        counts: Counts = _worker["loop"].run_until_complete(_worker["store"].run(
            lambda tx: _write_all(tx, items)))
        return counts
    finally:
        turns.done(k)


# -- writing ----------------------------------------------------------------------------------

#: Resources imported, and how many of them were stored already as they are (not written again)
Counts = tuple[int, int]


def _write_all(tx: Any, items: list[Any]) -> Counts:
    versions = tx.write_many(items, "PUT")
    unchanged = 0
    last: dict[tuple[str, str], int] = {}
    for v in versions:  # stored before, or given twice here: the second time is unchanged
        key = (v.type, v.id)
        unchanged += v.last_updated != tx.now or last.get(key) == v.version
        last[key] = v.version
    return len(versions), unchanged


class Importer:
    def __init__(self, store: Any, settings: Any, *, atomic: bool = False,
                 workers: int | None = None, model_check: bool = False, chunk: int = CHUNK,
                 progress: Callable[[int, int, int], None] | None = None):
        if chunk < 1:
            raise ValueError("a chunk holds at least one line")
        self.store = store
        self.chunk = chunk
        self.settings = settings
        self.atomic = atomic
        self.model_check = model_check
        self.workers = workers or os.cpu_count() or 1
        self.progress = progress or (lambda done_bytes, imported, rejected: None)
        self.report = Report()
        self.sliced: set[str] = set()  # the batch files read in slices (_batch_slices)
        self.uncommitted = 0  # resources written in an --atomic import's open transaction
        self.stopping = threading.Event()
        #: Stops the writing of the chunks after the one under way (_Turns.halt).
        self.halt: Callable[[], None] = lambda: None

    def stop(self) -> None:
        """Read no further: the chunks under way are written (an --atomic import writes
        nothing), then :meth:`run` returns its report, marked interrupted. Safe to call from a
        signal handler."""
        self.stopping.set()

    def _items(self, paths: list[Path]) -> Iterator[tuple[str, _Counting, Item, int, int]]:
        """Every item of every file: (file, its bytes-read counter, item, its bytes of JSON, the
        resources it holds: a slice of a batch file, BATCH_SLICE).
        A file that cannot be imported, or the rest of one that breaks, is listed as rejected."""
        for path in paths:
            try:
                yield from self._file_items(path)
            except _Stopped:  # stdin, idle when the import was stopped: nothing more is read
                return

    def _file_items(self, path: Path) -> Iterator[tuple[str, _Counting, Item, int, int]]:
        """The items of one file (:meth:`_items`)."""
        name = source_name(path)
        try:
            kind = "ndjson" if _is_ndjson(path) else _json_kind(path)
            stream, counting = _open(path, self.stopping.is_set)
        except _NotImportable as exc:
            self.report.reject(name, 1, str(exc))
            return
        with stream:
            try:
                if kind == "ndjson":
                    items = _ndjson_sized(_first_line_checked(stream) if name == STDIN_NAME
                                          else stream)
                elif kind == "entries":
                    items = _bundle_items(stream, *_urn_links(path))
                elif self.atomic and kind in _BUNDLE_KINDS:
                    raise _NotImportable(_NOT_ATOMIC)
                elif kind == "batch":
                    envelope, _, escapes = _envelope(path)
                    _check_envelope(envelope)
                    items = _batch_slices(stream, envelope, escapes)
                    self.sliced.add(name)
                else:  # one item: the whole file
                    if kind != "resource" and _envelope(path)[1] > _max_entries():
                        raise _NotImportable(_too_many(kind))
                    try:
                        data = stream.read()
                    except _UNREADABLE as exc:
                        raise _NotImportable(f"cannot be read: {exc}") from None
                    yield name, counting, (1, data), len(data), 1
                    return
            except _NotImportable as exc:
                self.report.reject(name, 1, str(exc))
                return
            last = read = 0
            weight = BATCH_SLICE if kind == "batch" else 1  # resources an item holds
            try:
                for item, upto in items:
                    yield name, counting, item, upto - read, weight
                    last, read = item[0], upto
            except (ijson.JSONError, *_UNREADABLE) as exc:  # broken after a good start
                at = last + 1
                what = "line" if kind == "ndjson" else "entry"
                self.report.reject(
                    name, at, f"cannot be read from {what} {at} on: {exc}")

    def _chunks(self, paths: list[Path]) -> Iterator[tuple[list[Item], list[_Source]]]:
        """The items in chunks of ``chunk`` resources (a slice of a batch file holds many) or
        CHUNK_BYTES of JSON, each with the files its items come from, in order. A chunk runs on
        into the next file: a small file, or a file's last lines, would otherwise make a small
        chunk, written while the workers are still preparing the next one, and the store would
        wait."""
        chunk: list[Item] = []
        sources: list[_Source] = []
        size = resources = 0
        for name, counting, item, length, weight in self._items(paths):
            if not sources or sources[-1].name != name:
                sources.append(_Source(name, counting))
            chunk.append(item)
            sources[-1].items += 1
            sources[-1].last = item[0]
            size += length
            resources += weight
            if resources >= self.chunk or size >= CHUNK_BYTES:
                yield chunk, _read(sources)
                chunk, sources, size, resources = [], [], 0, 0
        if chunk:
            yield chunk, _read(sources)

    async def run(self, paths: list[Path]) -> Report:
        _warm_up()
        # An --atomic import writes millions of short-lived rows here, and no reference cycles
        # worth collecting: the cyclic collector is off for the import's duration.
        gc.disable()
        try:
            return await self._run(paths)
        finally:
            gc.enable()

    async def _run(self, paths: list[Path]) -> Report:
        started = time.monotonic()
        self.report.order = {source_name(p): i for i, p in enumerate(paths)}
        ctx = multiprocessing.get_context("spawn")
        read: dict[int, int] = {}  # bytes read so far, per file
        # At most this many chunks are read ahead of the writes: memory stays bounded.
        slots = threading.Semaphore(self.workers * 2)
        meta: collections.deque[list[_Source]] = collections.deque()

        failed = threading.Event()

        def jobs() -> Iterator[tuple[int, list[Item], bool]]:
            for k, (chunk, sources) in enumerate(self._chunks(paths)):
                slots.acquire()
                if failed.is_set():
                    return
                if self.stopping.is_set():
                    self.report.interrupted = True
                    return
                meta.append(sources)
                yield k, chunk, self.model_check

        def consumed(sources: list[_Source]) -> None:
            slots.release()
            for source in sources:
                read[id(source.counting)] = source.read
                if source.name == STDIN_NAME:
                    self.report.stdin_through = source.last
            self.progress(sum(read.values()), self.report.imported + self.uncommitted,
                          self.report.rejected_count)

        def unblock() -> None:  # jobs() reads no further
            failed.set()
            slots.release(self.workers * 2)

        spawned = ctx.Value("i", 0)  # worker processes, counted by _watched
        if self.atomic:  # one transaction: the workers prepare, this process writes
            with _pool(ctx, self.workers, _prepare_worker, (spawned,), unblock) as pool:
                await self._atomic(_watched(pool.imap(_prepare_chunk, jobs()), spawned,
                                            self.workers), meta, consumed)
        else:
            turns = _Turns(ctx)
            self.halt = turns.halt
            with _pool(ctx, self.workers, _open_writer,
                       (self.settings, turns, self.chunk, self.workers, spawned),
                       unblock) as pool:
                for k, (written, prepared) in enumerate(_watched(
                        pool.imap(_prepare_and_write, jobs()), spawned, self.workers)):
                    sources = meta.popleft()
                    if written is None:  # a chunk with Bundles, ours to write in its turn
                        try:
                            batch = await self._sort(sources, prepared)
                            written = await self.store.run(
                                lambda tx, b=batch: _write_all(tx, b)) if batch else (0, 0)
                        finally:
                            turns.done(k)
                    else:
                        await self._sort(sources, prepared)
                    self.report.count(written)
                    consumed(sources)
        self.report.seconds = time.monotonic() - started
        self.progress(sum(read.values()), self.report.imported, self.report.rejected_count)
        return self.report

    async def _sort(self, sources: list[_Source], prepared: list[tuple[int, Prepared]],
                    atomic: bool = False) -> list[Any]:
        """The resources of a prepared chunk; rejected lines noted; Bundles processed (refused
        in an ``atomic`` import, which is one transaction and cannot hold theirs). ``prepared``:
        results, each with the place in the chunk of the item it is for."""
        batch = []
        for at, (kind, number, payload) in prepared:
            if kind == "ok":
                batch.append(payload)
                continue
            name = _name_at(sources, at)
            if kind == "err":
                self.report.reject(name, number, payload)
            elif atomic:
                self.report.reject(name, number, _NOT_ATOMIC)
            else:  # the lines before it are written first: later lines win
                if self.stopping.is_set():  # Bundle by Bundle, a chunk of them stops at once
                    self.report.interrupted = True
                    self.halt()
                    break
                if batch:
                    self.report.count(await self.store.run(lambda tx, b=batch: _write_all(tx, b)))
                    batch = []
                await self._bundle(name, number, payload)
        return batch

    async def _bundle(self, name: str, number: int, bundle: dict[str, Any]) -> None:
        from server.fhir.request import FhirRequest
        from server.fhir.transaction import batch, check_envelope, replay, transaction

        req = FhirRequest("POST", "transaction", settings=self.settings,
                          base=(self.settings.base_url or "").rstrip("/") + "/fhir",
                          _resource=bundle)
        entries = bundle.get("entry") or []
        began = instant(time.time_ns() // 1000)
        # A slice of a batch file (_batch_slices) is numbered by its first entry, and its
        # refused entries are listed by theirs; a whole Bundle's, under its own line.
        sliced = name in self.sliced
        first = number if sliced else 1
        if isinstance(entries, list) and len(entries) > _max_entries():
            self.report.reject(name, number, _too_many(str(bundle.get("type"))))
            return
        try:
            check_envelope(bundle)
            if bundle.get("type") in ("transaction", "batch"):
                entries = _creates_as_updates(entries)
            if bundle.get("type") == "transaction":
                response = await transaction(req, self.store, entries)
                assert response.resource is not None
                written = list(zip(entries, response.resource["entry"], strict=True))
            else:
                run = replay if bundle.get("type") == "history" else batch
                response = await run(req, self.store, entries)
                assert response.resource is not None
                written = []
                for i, e in enumerate(response.resource["entry"]):
                    status = e["response"]["status"]
                    if status[0] in "45":
                        issues = e["response"].get("outcome", {}).get("issue", [{}])
                        self.report.reject(
                            name, first + i if sliced else number,
                            f"batch entry {first + i}: {status}: "
                            f"{issues[0].get('diagnostics', '')}")
                    else:
                        written.append((entries[i], e))
            self.report.count(_tally(written, began))
            self.report.bundles += 1
        except FhirError as exc:
            self.report.reject(name, number, f"{bundle.get('type')} Bundle rejected: {exc}")
        except Exception as exc:  # a fault of ours: this line is reported, the rest imported
            log.exception("import.bundle.failed", extra={"event": "import.bundle.failed",
                                                          "source": name, "line": number})
            self.report.reject(
                name, number, f"{bundle.get('type')} Bundle failed on an internal error "
                              f"({type(exc).__name__}); a transaction left nothing, a batch "
                              "may have written some entries")

    async def _atomic(self, results: Iterator[list[Prepared]],
                      meta: collections.deque[list[_Source]],
                      consumed: Callable[[list[_Source]], None]) -> None:
        """Everything in one store transaction, fed through a queue while the pool prepares.
        After a rejected line nothing more is written, but the rest is still checked so that
        every bad line is reported; then the transaction is rolled back."""
        feed: queue.Queue[list[Any] | bool | None] = queue.Queue(maxsize=2)  # False: undo

        class Abort(Exception):
            pass

        def write(tx: Any) -> Counts:
            imported = unchanged = 0
            while True:
                batch = feed.get()
                if isinstance(batch, bool):  # False: undo
                    raise Abort
                if batch is None:
                    if self.stopping.is_set():
                        self.report.interrupted = True
                    if self.report.rejected_count or self.report.interrupted:
                        raise Abort
                    return imported, unchanged
                n, same = _write_all(tx, batch)
                imported, unchanged = imported + n, unchanged + same

        job = asyncio.ensure_future(self.store.run(write))
        await asyncio.sleep(0)
        try:
            for prepared in results:
                sources = meta.popleft()
                batch = await self._sort(sources, list(enumerate(prepared)), atomic=True)
                if not self.report.rejected_count:
                    await asyncio.to_thread(feed.put, batch)
                    self.uncommitted += len(batch)
                consumed(sources)
        except BaseException:  # the transaction is rolled back, then the failure goes on
            await asyncio.to_thread(feed.put, False)
            with contextlib.suppress(Abort):
                await job
            raise
        await asyncio.to_thread(feed.put, None)
        with contextlib.suppress(Abort):  # rolled back: nothing imported
            self.report.count(await job)


def _read(sources: list[_Source]) -> list[_Source]:
    """The sources of a chunk, with how far their files were read when it was: progress counts
    the bytes of the chunks written, not of those read ahead."""
    for source in sources:
        source.read = source.counting.count
    return sources


def _name_at(sources: list[_Source], at: int) -> str:
    """The file of the item at this place in a chunk."""
    for source in sources:
        if at < source.items:
            return source.name
        at -= source.items
    raise IndexError(at)


def _tally(written: list[tuple[dict[str, Any], dict[str, Any]]], began: str) -> Counts:
    """(writes, of which unchanged) of the entries of a Bundle processed from ``began`` on, each
    with its response entry. Reads are neither, nor is a conditional create that found its
    match. A write is unchanged when it left its resource as it was: an entry answered without
    a version (of a history replayed before, a deletion of nothing), an update or a deletion
    whose answer was last modified before the Bundle (the same content again, a deletion made
    before)."""
    writes = unchanged = 0
    for entry, answer in written:
        method = entry.get("request", {}).get("method")
        response = answer["response"]
        if method in ("GET", "HEAD"):
            continue
        if "etag" not in response:
            writes += 1
            unchanged += 1
            continue
        if method == "POST" and not response["status"].startswith("201"):
            continue
        writes += 1
        unchanged += "lastModified" in response and response["lastModified"] < began
    return writes, unchanged

