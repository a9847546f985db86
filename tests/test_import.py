"""``consilium import`` through the real command: formats, errors, --atomic, memory, a live server."""

from __future__ import annotations

import gzip
import json
import resource
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.config import Settings
from tests.conftest import issue_token


def consilium(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server", "import", "--data-dir", str(data_dir),
                           "--workers", "2", *args], capture_output=True, text=True, timeout=600)


def patient(i: int, **extra: object) -> dict:
    return {"resourceType": "Patient", "id": f"imp-{i}", "name": [{"family": f"Family{i}"}],
            "gender": "female", **extra}


def write_ndjson(path: Path, lines: list[object]) -> Path:
    with open(path, "w") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


def read_all(data_dir: Path) -> dict[tuple[str, str], dict]:
    from server.storage.sqlite import SqliteStore

    store = SqliteStore(data_dir / "consilium.db")
    try:
        rows = store._query("SELECT r.type, r.id, v.body FROM resource r JOIN version v "
                            "ON v.seq = r.seq WHERE r.deleted = 0", ())
        return {(t, i): json.loads(b) for t, i, b in rows}
    finally:
        store.close_sync()


def test_ndjson_good_lines_are_kept_and_bad_lines_listed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    src = write_ndjson(tmp_path / "in.ndjson", [
        patient(1), patient(2), {**patient(3), "gender": "robot"}, "{broken", "",
        {"resourceType": "Observation", "status": "final", "code": {"text": "dose"},
         "valueQuantity": {"value": 1.50, "unit": "mg"}},
        {"resourceType": "Spaceship"}, patient(4)])
    src.write_text(src.read_text().replace("1.5,", "1.50,"))
    out = consilium(str(src), data_dir=data)
    assert out.returncode == 1
    assert "imported 4 resources" in out.stdout
    assert "rejected 3" in out.stdout
    err = out.stderr.splitlines()
    assert any(line.startswith(f"{src}:3:") and "robot" in line for line in err)
    assert any(line.startswith(f"{src}:4:") and "invalid JSON" in line for line in err)
    assert any(line.startswith(f"{src}:7:") and "Spaceship" in line for line in err)
    stored = read_all(data)
    assert {("Patient", f"imp-{i}") for i in (1, 2, 4)} <= set(stored)
    assert ("Patient", "imp-3") not in stored
    obs = [r for (t, _), r in stored.items() if t == "Observation"]
    assert len(obs) == 1
    from server.storage.sqlite import SqliteStore

    store = SqliteStore(data / "consilium.db")
    try:
        raw = store.read_sync("Observation", obs[0]["id"])
        assert raw is not None and b'"value":1.50' in (raw.body or b"")
    finally:
        store.close_sync()


def test_conditional_references_are_refused_however_written(tmp_path: Path) -> None:
    """A conditional reference is resolved only in a transaction Bundle: an imported line
    holding one is rejected, its '?' written plainly or as a JSON escape."""
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "t"},
           "subject": {"reference": "Patient?identifier=urn:mrn|1"}}
    src = write_ndjson(tmp_path / "in.ndjson", [
        obs, json.dumps(obs).replace("?", "\\u003f"), json.dumps(obs).replace("?", "\\u003F"),
        {**obs, "subject": {"reference": "Patient/imp-1"}, "note": [{"text": "why?"}]}])
    out = consilium(str(src), data_dir=tmp_path / "data")
    assert out.returncode == 1, out.stderr
    assert "imported 1 resource " in out.stdout and "rejected 3" in out.stdout
    assert sum("resolved only in a transaction" in line for line in out.stderr.splitlines()) == 3


def test_atomic_import_is_all_or_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    lines: list[object] = [patient(i) for i in range(600)]
    lines[350] = {**patient(350), "birthDate": "yesterday"}
    lines[599] = "not json"
    src = write_ndjson(tmp_path / "in.ndjson", lines)
    out = consilium("--atomic", str(src), data_dir=data)
    assert out.returncode == 1
    assert "nothing imported" in out.stdout
    assert f"{src}:351:" in out.stderr and f"{src}:600:" in out.stderr
    assert read_all(data) == {}
    good = write_ndjson(tmp_path / "good.ndjson", [patient(i) for i in range(600)])
    assert consilium("--atomic", str(good), data_dir=data).returncode == 0
    assert len(read_all(data)) == 600


def test_the_first_thousand_rejected_lines_are_listed_in_order_and_all_written_to_rejects(
        tmp_path: Path) -> None:
    """A file of bad lines does not grow the import's memory: the summary lists the first
    1,000 rejected lines, in file order, and --rejects FILE gets every one."""
    bad = write_ndjson(tmp_path / "bad.ndjson",
                       [patient(1)] + [{"resourceType": "Spaceship"}] * 1500 + [patient(2)])
    missing_type = write_ndjson(tmp_path / "first.ndjson", ['{"id": "x"}'])
    rejects = tmp_path / "rejects.txt"
    out = consilium(str(missing_type), str(bad), "--chunk", "100", "--rejects", str(rejects),
                    data_dir=tmp_path / "data")
    assert out.returncode == 1
    assert "imported 2 resources" in out.stdout and "rejected 1,501" in out.stdout, out.stdout
    listed = [line for line in out.stderr.splitlines() if ".ndjson:" in line]
    assert len(listed) == 1000
    assert listed[0].startswith(f"{missing_type}:1:")  # the first file's first
    lines = [int(line.split(":")[1]) for line in listed[1:]]
    assert lines == sorted(lines)
    assert f"... and 501 more (all in {rejects})" in out.stderr
    written = rejects.read_text().splitlines()
    assert len(written) == 1501 and all("Spaceship" in w for w in written if str(bad) in w)
    # A file rejected whole as it is read is reported before the lines of the files ahead of
    # it, which the workers check: still, the ones listed are the first in file order.
    array = tmp_path / "array.json"
    array.write_text("[]")
    out = consilium(str(bad), str(array), data_dir=tmp_path / "data2")
    listed = [line for line in out.stderr.splitlines() if ".ndjson:" in line or ".json:" in line]
    assert len(listed) == 1000 and not any(line.startswith(str(array)) for line in listed)
    assert listed[-1].startswith(f"{bad}:1001:"), listed[-1]


def test_bulk_writers_page_caches_take_half_the_memory_at_most(tmp_path: Path,
                                                                monkeypatch: Any) -> None:
    """Each writing worker keeps about 100 KiB a resource of its chunk in its page cache, but
    all of them together no more than half the machine's memory."""
    from server.storage import sqlite

    def cache_kib(**kw: int) -> int:
        conn = sqlite.connect(tmp_path / "c.db", **kw)
        try:
            return -int(conn.execute("PRAGMA cache_size").fetchone()[0])
        finally:
            conn.close()

    monkeypatch.setattr(sqlite, "memory_kib", lambda: 64 << 20)  # 64 GiB
    assert cache_kib(bulk=20_000, writers=2) == 2_000_000
    monkeypatch.setattr(sqlite, "memory_kib", lambda: 4 << 20)  # 4 GiB
    assert cache_kib(bulk=20_000, writers=2) == (4 << 20) // 2 // 2
    assert cache_kib(bulk=20_000, writers=16) == 262_144  # never under 256 MiB
    assert cache_kib() == 262_144


def test_odd_lines_and_entries_are_rejected_and_the_import_goes_on(tmp_path: Path) -> None:
    """What once stopped a whole import with a traceback is one rejected line or entry now (or
    imported, when it is valid FHIR: a decimal beyond 64 bits), and the later files are read."""
    from tests.test_rest import nested_extensions

    data = tmp_path / "data"
    deep = write_ndjson(tmp_path / "deep.ndjson", [
        json.dumps({**nested_extensions(130), "id": "deep"}), patient(1)])
    big = 123456789012345678901234567890
    collection = tmp_path / "collection.json"
    collection.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:6a3e3c3e-1111-4c1c-9b61-5a1d3e0e9a01", "resource": patient(2)},
        {"fullUrl": ["not", "a", "url"], "resource": patient(3)},
        {"resource": {"resourceType": "Observation", "id": "big", "status": "final",
                      "code": {"text": "count"}, "valueQuantity": {"value": big}}},
        {"resource": {**nested_extensions(130), "id": "deep-2"}}]}))
    escaped = tmp_path / "escaped.json"  # escapes as an ASCII-only writer leaves them
    escaped.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {**patient(5), "name": [{"family": "Smile\U0001F600"}]}},
        {"resource": {**patient(6), "name": [{"family": "Lone\ud800"}]}}]}, ensure_ascii=True))
    later = write_ndjson(tmp_path / "later.ndjson", [patient(4)])
    out = consilium(str(deep), str(collection), str(escaped), str(later), data_dir=data)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    assert "rejected 4" in out.stdout, out.stdout
    # A lone surrogate is not text: rejected, as in NDJSON, not stored as "?".
    assert f"{escaped}:2:" in out.stderr and "surrogate" in out.stderr, out.stderr
    err = out.stderr
    assert f"{deep}:1:" in err and "nested" in err, err
    assert f"{collection}:2:" in err and "fullUrl" in err, err
    assert f"{collection}:4:" in err, err
    stored = read_all(data)
    assert {i for _, i in stored} == {"imp-1", "imp-2", "big", "imp-4", "imp-5"}, stored.keys()
    assert stored[("Patient", "imp-5")]["name"] == [{"family": "Smile\U0001F600"}]
    assert str(big) in json.dumps(stored[("Observation", "big")])


def test_a_byte_order_mark_that_starts_a_file_is_passed_over(tmp_path: Path) -> None:
    src = tmp_path / "windows.ndjson"
    src.write_bytes(b"\xef\xbb\xbf" + json.dumps(patient(1)).encode() + b"\r\n"
                    + json.dumps(patient(2)).encode() + b"\r\n")
    out = consilium(str(src), data_dir=tmp_path / "data")
    assert out.returncode == 0, out.stderr
    assert {("Patient", "imp-1"), ("Patient", "imp-2")} <= set(read_all(tmp_path / "data"))


def test_bundle_files_are_checked_as_bundles_and_documents_kept_whole(tmp_path: Path) -> None:
    """A Bundle file whose envelope is not a Bundle's (an unknown type, entry not an array, a
    misspelt member) is rejected, not taken as empty or as another type; a document or message
    Bundle is stored whole, as the record it is."""
    def bundle(name: str, **members: object) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps({"resourceType": "Bundle", **members}))
        return path

    entry = {"resource": patient(1)}
    typo = bundle("typo.json", type="transactoin", entry=[
        {**entry, "request": {"method": "DELETE", "url": "Patient/imp-1"}}])
    as_object = bundle("object.json", type="collection", entry=entry)
    misspelt = bundle("misspelt.json", type="collection", entries=[entry])
    requested = bundle("requested.json", type="collection", entry=[  # bdl-3
        {**entry, "request": {"method": "DELETE", "url": "Patient/imp-1"}}])
    document = bundle("document.json", id="doc1", type="document",
                      identifier={"system": "urn:ietf:rfc:3986",
                                  "value": "urn:uuid:0c3a2f9e-1c4e-4d55-8b0a-5b3c1d2e3f40"},
                      timestamp="2026-11-24T10:00:00Z", entry=[
                          {"fullUrl": "urn:uuid:9d1c2b3a-4e5f-4a6b-8c7d-0e1f2a3b4c5d",
                           "resource": {"resourceType": "Composition", "status": "final",
                                        "type": {"text": "summary"}, "date": "2026-11-24",
                                        "title": "Summary", "author": [{"display": "Dr"}]}}])
    out = consilium(str(typo), str(as_object), str(misspelt), str(requested), str(document),
                    data_dir=tmp_path / "data")
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "rejected 4" in out.stdout, out.stdout
    assert f"{requested}:1:" in out.stderr and "bdl-3" in out.stderr, out.stderr
    err = out.stderr
    assert f"{typo}:1:" in err and "transactoin" in err, err
    assert f"{as_object}:1:" in err and "entry" in err, err
    assert f"{misspelt}:1:" in err and "entries" in err, err
    assert set(read_all(tmp_path / "data")) == {("Bundle", "doc1")}


@pytest.mark.parametrize("name", ["patients", "patients.json", "PATIENTS.NDJSON"])
@pytest.mark.parametrize("start", [b"", b"\n\n", b"\xef\xbb\xbf"])
def test_ndjson_is_known_by_its_content_whatever_the_name(tmp_path: Path, name: str,
                                                          start: bytes) -> None:
    """Whatever its name, a file of JSON objects one a line is NDJSON, also when it starts with
    blank lines or a byte order mark; a single resource so started is one resource."""
    src = write_ndjson(tmp_path / name, [patient(1), patient(2)])
    src.write_bytes(start + src.read_bytes())
    out = consilium(str(src), data_dir=tmp_path / "data")
    assert out.returncode == 0, out.stderr
    assert "imported 2 resources" in out.stdout
    one = tmp_path / "one.json"
    one.write_bytes(start + json.dumps(patient(3), indent=2).encode())
    out = consilium(str(one), data_dir=tmp_path / "data")
    assert out.returncode == 0, out.stderr
    assert "imported 1 resource " in out.stdout


def test_resources_without_an_id_are_not_made_twice_by_importing_again(tmp_path: Path) -> None:
    """A line without an id gets one derived from its content, and a collection entry one from
    its urn:uuid fullUrl: importing the same files again (after Ctrl-C, or by mistake) finds
    them stored, as resources with ids are, instead of making them again."""
    lines = write_ndjson(tmp_path / "noid.ndjson", [
        {k: v for k, v in patient(i).items() if k != "id"} for i in range(3)])
    uuid_ = "5e0c1d2a-3b4c-4d5e-8f60-718293a4b5c6"
    collection = tmp_path / "collection.json"
    collection.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": f"urn:uuid:{uuid_}", "resource": {"resourceType": "Organization",
                                                      "name": "Hohhot Centre"}},
        {"resource": {"resourceType": "Patient", "managingOrganization": {
            "reference": f"urn:uuid:{uuid_}"}}}]}))
    data = tmp_path / "data"
    first = consilium(str(lines), str(collection), data_dir=data)
    assert first.returncode == 0, first.stderr
    stored = read_all(data)
    assert len(stored) == 5 and ("Organization", uuid_) in stored, stored.keys()
    again = consilium(str(lines), str(collection), data_dir=data)
    assert again.returncode == 0, again.stderr
    assert "(5 unchanged: already stored as they are)" in again.stdout, again.stdout
    assert read_all(data) == stored
    # The id comes from the content, not from how it is written: the same resource with its
    # members in another order and other spacing is the same resource; given twice, one.
    same = {k: v for k, v in patient(0).items() if k != "id"}
    reordered = tmp_path / "reordered.ndjson"
    reordered.write_text(json.dumps(dict(reversed(list(same.items()))), indent=None,
                                    separators=(" , ", " : ")) + "\n" + json.dumps(same) + "\n")
    third = consilium(str(reordered), data_dir=data)
    assert "imported 2 resources (2 unchanged: already stored as they are)" in third.stdout, \
        third.stdout
    assert read_all(data) == stored


def test_rejects_written_over_an_input_file_are_refused(tmp_path: Path) -> None:
    src = write_ndjson(tmp_path / "in.ndjson", [patient(1)])
    before = src.read_bytes()
    out = consilium(str(src), "--rejects", str(src), data_dir=tmp_path / "data")
    assert out.returncode == 2 and "--rejects" in out.stderr, out.stderr
    assert src.read_bytes() == before


def test_each_reject_is_one_line_of_the_rejects_file(tmp_path: Path) -> None:
    """FILE:LINE: why, one per line, whatever the reason's own text holds (a JSON parser's
    message spans lines)."""
    src = tmp_path / "truncated.json"  # a collection cut short: the parser's message
    src.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": patient(1)}, {"resource": patient(2)}]})[:-30])
    rejects = tmp_path / "rejects.txt"
    out = consilium(str(src), "--rejects", str(rejects), data_dir=tmp_path / "data")
    assert out.returncode == 1, out.stderr
    lines = rejects.read_text().splitlines()
    assert lines and all(line.startswith(f"{src}:") for line in lines), lines


def test_rejects_written_into_the_data_dir_are_refused(tmp_path: Path) -> None:
    """--rejects naming the store (or anything in the data dir) would destroy it: refused."""
    data = tmp_path / "data"
    src = write_ndjson(tmp_path / "in.ndjson", [patient(1)])
    assert consilium(str(src), data_dir=data).returncode == 0
    before = (data / "consilium.db").read_bytes()
    bad = write_ndjson(tmp_path / "bad.ndjson", [{"resourceType": "Patient", "gender": "x"}])
    for target in (data / "consilium.db", data / "consilium.db-wal", data / "new.txt"):
        out = consilium(str(bad), "--rejects", str(target), data_dir=data)
        assert out.returncode == 2 and "--rejects" in out.stderr, out.stderr
    assert (data / "consilium.db").read_bytes() == before
    assert not (data / "new.txt").exists()
    assert ("Patient", "imp-1") in read_all(data)


def test_a_store_that_cannot_be_opened_is_said_so_in_one_line(tmp_path: Path) -> None:
    """A data dir that is a file (or read-only): one line naming it, exit 2, no summary of an
    import that never began and no traceback."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    src = write_ndjson(tmp_path / "in.ndjson", [patient(1)])
    out = consilium(str(src), data_dir=not_a_dir)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "cannot open the store" in out.stderr and str(not_a_dir) in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "imported" not in out.stdout, out


def test_a_directory_is_refused_as_such(tmp_path: Path) -> None:
    out = consilium(str(tmp_path), data_dir=tmp_path / "data")
    assert out.returncode == 2 and "a directory, not a file" in out.stderr


def test_compression_is_known_by_content(tmp_path: Path) -> None:
    """gzip whatever the file's name; another compression is named, not read as garbage."""
    import bz2

    plain = json.dumps(patient(1)).encode() + b"\n" + json.dumps(patient(2)).encode() + b"\n"
    unnamed = tmp_path / "export.ndjson"
    unnamed.write_bytes(gzip.compress(plain))
    squeezed = tmp_path / "other.ndjson.bz2"
    squeezed.write_bytes(bz2.compress(plain))
    data = tmp_path / "data"
    out = consilium(str(unnamed), str(squeezed), data_dir=data)
    assert out.returncode == 1, out.stderr
    assert "imported 2 resources" in out.stdout, out.stdout
    assert f"{squeezed}:1: compressed with bzip2" in out.stderr and "gzip" in out.stderr, \
        out.stderr
    assert len(read_all(data)) == 2


def test_bundles_gzip_and_reimport(tmp_path: Path) -> None:
    data = tmp_path / "data"
    collection = tmp_path / "collection.json"
    collection.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Organization", "id": "org-1", "name": "Hohhot Centre"}},
        {"resource": patient(10)}]}))
    tx = tmp_path / "transaction.json"
    tx.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0d5f7a3c-9f54-4d1c-9b61-5a1d3e0e9a01",
         "resource": {"resourceType": "Patient", "name": [{"family": "رحیمی"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:0d5f7a3c-9f54-4d1c-9b61-5a1d3e0e9a01"}},
         "request": {"method": "POST", "url": "Observation"}}]}))
    gz = tmp_path / "more.ndjson.gz"
    with gzip.open(gz, "wt") as f:
        f.write(json.dumps(patient(11)) + "\n")
    out = consilium(str(collection), str(tx), str(gz), data_dir=data)
    assert out.returncode == 0, out.stderr
    stored = read_all(data)
    assert ("Organization", "org-1") in stored and ("Patient", "imp-11") in stored
    persian = next(r for (t, _), r in stored.items() if t == "Patient"
                   and r["name"][0]["family"] == "رحیمی")
    obs = next(r for (t, _), r in stored.items() if t == "Observation")
    assert obs["subject"]["reference"] == f"Patient/{persian['id']}"
    again = consilium(str(collection), data_dir=data)
    assert again.returncode == 0
    assert read_all(data)[("Organization", "org-1")]["meta"]["versionId"] == "1"
    # What was already stored as it is in the file is not written again, and said so.
    assert "imported 2 resources (2 unchanged: already stored as they are)" in again.stdout, \
        again.stdout
    collection.write_text(collection.read_text().replace("Hohhot Centre", "Hohhot Clinic"))
    again = consilium(str(collection), str(gz), data_dir=data)
    assert "imported 3 resources (2 unchanged: already stored as they are)" in again.stdout, \
        again.stdout
    assert read_all(data)[("Organization", "org-1")]["meta"]["versionId"] == "2"


def test_references_between_the_entries_of_a_collection_hold(tmp_path: Path) -> None:
    """A collection's entries are imported one by one, and a reference to another entry's
    urn:uuid fullUrl is to that entry (bundle.html#references): it becomes the Type/id the
    entry is stored under (its own id, or a new one). A searchset's OperationOutcome is about
    the search and is left out."""
    patient_urn = "urn:uuid:11111111-1111-4111-8111-111111111111"
    org_urn = "urn:uuid:22222222-2222-4222-8222-222222222222"
    collection = tmp_path / "collection.json"
    collection.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:33333333-3333-4333-8333-333333333333",  # before its target
         "resource": {"resourceType": "Observation", "id": "co-1", "status": "final",
                      "code": {"text": "x"}, "subject": {"reference": patient_urn}}},
        {"fullUrl": patient_urn, "resource": {"resourceType": "Patient",
                                              "managingOrganization": {"reference": org_urn}}},
        {"fullUrl": org_urn, "resource": {"resourceType": "Organization", "id": "co-org"}}]}))
    searchset = tmp_path / "searchset.json"
    searchset.write_text(json.dumps({"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": patient(20), "search": {"mode": "match"}},
        {"resource": {"resourceType": "OperationOutcome", "issue": [
            {"severity": "warning", "code": "not-supported", "diagnostics": "ignored"}]},
         "search": {"mode": "outcome"}}]}))
    data = tmp_path / "data"
    out = consilium(str(collection), str(searchset), data_dir=data)
    assert out.returncode == 0, out.stderr
    stored = read_all(data)
    (pid,) = [i for t, i in stored if t == "Patient" and i != "imp-20"]
    assert stored[("Observation", "co-1")]["subject"]["reference"] == f"Patient/{pid}"
    assert stored[("Patient", pid)]["managingOrganization"]["reference"] == "Organization/co-org"
    assert not any(t == "OperationOutcome" for t, _ in stored)


def test_transaction_bundles_resolve_references_as_the_api_does(tmp_path: Path) -> None:
    """A transaction Bundle is processed as POST [base] processes it (server.fhir.transaction):
    a relative reference in an entry with a RESTful fullUrl is to the entry whose fullUrl is
    [root]/[type]/[id] (bundle.html §2.36.4.1), even when another server's; a reference to a
    urn:uuid that is no entry's fullUrl rejects the Bundle."""
    root = "http://example.org/fhir"
    tx = tmp_path / "transaction.json"
    tx.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"{root}/Observation/o1",
         "resource": {"resourceType": "Observation", "id": "o1", "status": "final",
                      "code": {"text": "x"}, "subject": {"reference": "Patient/p1"}},
         "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": f"{root}/Patient/p1", "resource": {"resourceType": "Patient", "id": "p1"},
         "request": {"method": "POST", "url": "Patient"}}]}))
    dangling = tmp_path / "dangling.json"
    dangling.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "y"},
                      "subject": {"reference": "urn:uuid:7d0c5bb4-5d0e-4c46-a3c2-5cd0c1a2b3c4"}},
         "request": {"method": "POST", "url": "Observation"}}]}))
    data = tmp_path / "data"
    malformed = tmp_path / "malformed.json"  # the Bundle itself is checked as the API does
    malformed.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction",
                                     "total": "one", "entry": []}))
    out = consilium(str(tx), str(dangling), str(malformed), data_dir=data)
    assert "dangling.json" in out.stderr and "urn:uuid:7d0c5bb4" in out.stderr, out.stderr
    assert "malformed.json:1:" in out.stderr and "total" in out.stderr, out.stderr
    stored = read_all(data)
    (pid,) = [i for t, i in stored if t == "Patient"]
    assert pid != "p1"
    (obs,) = [r for (t, _), r in stored.items() if t == "Observation"]
    assert obs["subject"]["reference"] == f"Patient/{pid}"


def test_a_history_bundle_is_replayed_oldest_first(tmp_path: Path) -> None:
    """A history lists the newest first: imported, its changes are made oldest first, so the
    current version is the newest, and its DELETE entries delete."""
    from tests.test_transactions import history_bundle

    src = tmp_path / "history.json"
    src.write_text(json.dumps(history_bundle("http://elsewhere.example/fhir")))
    data = tmp_path / "data"
    out = consilium(str(src), data_dir=data)
    assert out.returncode == 0, out.stderr
    assert "imported 5 resources" in out.stdout, out.stdout
    stored = read_all(data)
    assert stored[("Patient", "hb-1")]["name"] == [{"family": "Third"}]
    assert stored[("Patient", "hb-1")]["meta"]["versionId"] == "3"
    assert ("Patient", "hb-2") not in stored  # deleted


def test_ctrl_c_stops_a_file_of_bundles_between_bundles(tmp_path: Path) -> None:
    """A file of transaction Bundles is written Bundle by Bundle: Ctrl-C stops at the next
    one (it used to go on to the end of the file, exiting 0), and importing the file again
    completes it with nothing made twice."""
    import os
    import signal
    import time

    bundles, per = 400, 25
    src = write_ndjson(tmp_path / "bundles.ndjson", [
        {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": f"urn:uuid:{uuid.UUID(int=b * per + i)}",
             "resource": {"resourceType": "Patient", "name": [{"family": f"B{b}-{i}"}]},
             "request": {"method": "POST", "url": "Patient"}} for i in range(per)]}
        for b in range(bundles)])
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "server", "import", "--quiet", "--data-dir",
                             str(data), str(src)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while stored_count(data) < 10 * per and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert 0 < stored_count(data) < bundles * per
    again = consilium(str(src), data_dir=data)
    assert again.returncode == 0, again.stderr
    assert stored_count(data) == bundles * per


def test_a_transaction_of_creates_imported_again_makes_nothing_twice(tmp_path: Path) -> None:
    """Importing again is how an interrupted import is completed: a transaction's creates
    (POST) are made once, each under the uuid of its urn:uuid fullUrl (or an id derived from
    the entry), their references to one another rewritten as usual."""
    urn = "urn:uuid:4a7b0c3e-1d2f-4e5a-8b6c-7d8e9f0a1b2c"
    tx = tmp_path / "tx.json"
    tx.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": urn, "resource": {"resourceType": "Patient", "name": [{"family": "Once"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "o"},
                      "subject": {"reference": urn}},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "o"},
                      "subject": {"reference": urn}},
         "request": {"method": "POST", "url": "Observation"}}]}))
    data = tmp_path / "data"
    first = consilium(str(tx), data_dir=data)
    assert first.returncode == 0 and "imported 3 resources" in first.stdout, first
    stored = read_all(data)
    assert ("Patient", "4a7b0c3e-1d2f-4e5a-8b6c-7d8e9f0a1b2c") in stored
    observations = [r for (t, _), r in stored.items() if t == "Observation"]
    assert len(observations) == 2  # two entries alike are two resources
    assert {o["subject"]["reference"] for o in observations} == {
        "Patient/4a7b0c3e-1d2f-4e5a-8b6c-7d8e9f0a1b2c"}
    again = consilium(str(tx), data_dir=data)
    assert again.returncode == 0, again.stderr
    assert "imported 3 resources (3 unchanged: already stored as they are)" in again.stdout, \
        again.stdout
    assert read_all(data) == stored


def test_a_bundle_imported_again_counts_its_writes_as_unchanged(tmp_path: Path) -> None:
    """A history or transaction Bundle imported a second time changes nothing, and the summary
    says so, as for NDJSON lines."""
    from tests.test_transactions import history_bundle

    history = tmp_path / "history.json"
    history.write_text(json.dumps(history_bundle("http://elsewhere.example/fhir")))
    tx = tmp_path / "tx.json"
    tx.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(7), "request": {"method": "PUT", "url": "Patient/imp-7"}},
        {"resource": patient(8), "request": {"method": "PUT", "url": "Patient/imp-8"}}]}))
    data = tmp_path / "data"
    first = consilium(str(history), str(tx), data_dir=data)
    assert first.returncode == 0, first.stderr
    assert "imported 7 resources (2 Bundles)" in first.stdout, first.stdout
    again = consilium(str(history), str(tx), data_dir=data)
    assert again.returncode == 0, again.stderr
    assert "imported 7 resources (7 unchanged: already stored as they are)" in again.stdout, \
        again.stdout
    assert read_all(data)[("Patient", "hb-1")]["meta"]["versionId"] == "3"


def test_later_lines_win_across_chunks_and_bundles(tmp_path: Path) -> None:
    """Workers write their chunks in file order, and a chunk with a transaction Bundle waits
    its turn too: the resource given three times ends as the last line says, version 3."""
    chunk = 500

    def filler(n: int, start: int) -> list[object]:
        return [patient(start + i) for i in range(n)]

    update = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {**patient(0), "name": [{"family": "Second"}]},
         "request": {"method": "PUT", "url": "Patient/imp-0"}}]}
    lines: list[object] = [
        {**patient(0), "name": [{"family": "First"}]}, *filler(chunk + 10, 1), update,
        *filler(chunk, chunk + 20), {**patient(0), "name": [{"family": "Third"}]}]
    data = tmp_path / "data"
    out = consilium(str(write_ndjson(tmp_path / "in.ndjson", lines)), "--chunk", str(chunk),
                    data_dir=data)
    assert out.returncode == 0, out.stderr
    stored = read_all(data)
    assert len(stored) == 2 * chunk + 11
    assert stored[("Patient", "imp-0")]["name"] == [{"family": "Third"}]
    assert stored[("Patient", "imp-0")]["meta"]["versionId"] == "3"


def test_later_lines_win_within_a_chunk_around_a_bundle(tmp_path: Path) -> None:
    update = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {**patient(0), "name": [{"family": "Second"}]},
         "request": {"method": "PUT", "url": "Patient/imp-0"}},
        {"request": {"method": "GET", "url": "Patient/imp-0"}}]}
    lines = [{**patient(0), "name": [{"family": "First"}]}, update, patient(1)]
    data = tmp_path / "data"
    out = consilium(str(write_ndjson(tmp_path / "in.ndjson", lines)), data_dir=data)
    assert out.returncode == 0, out.stderr
    stored = read_all(data)
    assert stored[("Patient", "imp-0")]["name"] == [{"family": "Second"}]
    assert stored[("Patient", "imp-0")]["meta"]["versionId"] == "2"
    assert "imported 3 resources" in out.stdout  # the GET entry wrote nothing


def test_a_bundle_file_is_recognised_whatever_the_order_of_its_members(tmp_path: Path) -> None:
    tx = tmp_path / "tx.json"
    tx.write_text(json.dumps({"resourceType": "Bundle", "entry": [
        {"fullUrl": "urn:uuid:0d5f7a3c-9f54-4d1c-9b61-5a1d3e0e9a02",
         "resource": {"resourceType": "Patient", "name": [{"family": "Bat"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:0d5f7a3c-9f54-4d1c-9b61-5a1d3e0e9a02"}},
         "request": {"method": "POST", "url": "Observation"}}], "type": "transaction"}))
    data = tmp_path / "data"
    out = consilium(str(tx), data_dir=data)
    assert out.returncode == 0, out.stderr
    stored = read_all(data)
    pid = next(i for t, i in stored if t == "Patient")
    obs = next(r for (t, _), r in stored.items() if t == "Observation")
    assert obs["subject"]["reference"] == f"Patient/{pid}"


def test_json_files_that_are_not_bundles(tmp_path: Path) -> None:
    """A JSON file holding one resource is imported; one holding anything else, or broken
    JSON, is listed as rejected (exit 1) while the other files are still imported."""
    one = tmp_path / "one.json"
    one.write_text(json.dumps(patient(1)))
    array = tmp_path / "array.json"
    array.write_text(json.dumps([patient(2)]))
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": patient(3)}, {"resource": patient(4)}]})[:-40])
    empty = tmp_path / "empty.json"
    empty.write_text("")
    good = write_ndjson(tmp_path / "good.ndjson", [patient(5)])
    data = tmp_path / "data"
    out = consilium(*map(str, (one, array, broken, empty, good)), data_dir=data)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert set(read_all(data)) == {("Patient", "imp-1"), ("Patient", "imp-3"),
                                   ("Patient", "imp-5")}
    for name in ("array.json", "broken.json", "empty.json"):
        assert name in out.stderr + out.stdout


def test_broken_gzip_files_are_listed_and_the_others_imported(tmp_path: Path) -> None:
    whole = gzip.compress(b"".join(json.dumps(patient(i)).encode() + b"\n" for i in range(400)))
    cut = tmp_path / "cut.ndjson.gz"
    cut.write_bytes(whole[:len(whole) // 2])
    fake = tmp_path / "fake.json.gz"
    fake.write_bytes(b"not gzip at all")
    good = write_ndjson(tmp_path / "good.ndjson", [patient(1000)])
    data = tmp_path / "data"
    out = consilium(str(cut), str(fake), str(good), data_dir=data)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert "cut.ndjson.gz" in out.stderr and "fake.json.gz" in out.stderr
    stored = read_all(data)
    assert ("Patient", "imp-1000") in stored
    assert ("Patient", "imp-0") in stored  # the lines before the break are kept


def test_each_chunk_is_one_transaction(tmp_path: Path) -> None:
    """--chunk sets the resources per transaction: a transaction's resources share their
    lastUpdated, so 1,200 lines in chunks of 500 carry three."""
    data = tmp_path / "data"
    src = write_ndjson(tmp_path / "in.ndjson", [patient(i) for i in range(1200)])
    out = consilium(str(src), "--chunk", "500", data_dir=data)
    assert out.returncode == 0, out.stderr
    stamps = sorted(r["meta"]["lastUpdated"] for r in read_all(data).values())
    assert len(stamps) == 1200
    assert [stamps.count(s) for s in sorted(set(stamps))] == [500, 500, 200]


def test_chunks_run_on_from_file_to_file(tmp_path: Path) -> None:
    """A chunk does not end with its file (a small file would make a small transaction, which
    the workers do not keep the store busy with): 300 and 900 lines in chunks of 500 make three
    transactions; a rejected line is still listed under its own file and line."""
    data = tmp_path / "data"
    first = write_ndjson(tmp_path / "a.ndjson", [patient(i) for i in range(300)])
    second = write_ndjson(tmp_path / "b.ndjson", [
        *(patient(i) for i in range(300, 450)), {**patient(450), "gender": "robot"},
        *(patient(i) for i in range(451, 1200))])
    out = consilium(str(first), str(second), "--chunk", "500", data_dir=data)
    assert out.returncode == 1, out.stderr
    assert [line.split(": ")[0] for line in out.stderr.splitlines() if "robot" in line] == [
        f"{second}:151"]
    stamps = sorted(r["meta"]["lastUpdated"] for r in read_all(data).values())
    assert len(stamps) == 1199
    assert [stamps.count(s) for s in sorted(set(stamps))] == [499, 500, 200]


@pytest.mark.parametrize("chunk", ["20000", "2"])
def test_files_of_every_kind_in_one_chunk_report_their_own_lines(tmp_path: Path,
                                                                 chunk: str) -> None:
    """NDJSON, gzip, a collection Bundle, a single resource and a transaction Bundle share a
    chunk (or chunks of two lines run across them): each rejected line or entry is listed under
    its file, and the transaction is processed in its place, after the lines before it."""
    bad = {**patient(0), "gender": "robot"}
    first = write_ndjson(tmp_path / "a.ndjson", [patient(1), bad, patient(2)])
    gz = tmp_path / "b.ndjson.gz"
    with gzip.open(gz, "wt") as f:
        f.write("\n".join(json.dumps(x) for x in (bad, patient(3))) + "\n")
    collection = tmp_path / "c.json"
    collection.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": patient(4)}, {"resource": patient(5)}, {"resource": bad}]}))
    one = tmp_path / "d.json"
    one.write_text(json.dumps({**patient(1), "name": [{"family": "Replaced"}]}))
    tx = tmp_path / "e.json"
    tx.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {**patient(2), "name": [{"family": "ByTransaction"}]},
         "request": {"method": "PUT", "url": "Patient/imp-2"}}]}))
    last = write_ndjson(tmp_path / "f.ndjson", [bad, patient(6)])
    data = tmp_path / "data"
    out = consilium(*map(str, (first, gz, collection, one, tx, last)), "--chunk", chunk,
                    data_dir=data)
    assert out.returncode == 1, out.stderr
    robots = sorted(line.split(": ")[0] for line in out.stderr.splitlines() if "robot" in line)
    assert robots == [f"{first}:2", f"{gz}:1", f"{collection}:3", f"{last}:1"]
    stored = read_all(data)
    assert {i for _, i in stored} == {f"imp-{i}" for i in range(1, 7)}
    assert stored[("Patient", "imp-1")]["name"][0]["family"] == "Replaced"
    assert stored[("Patient", "imp-2")]["name"][0]["family"] == "ByTransaction"


def test_chunks_of_large_lines_end_by_size(tmp_path: Path, monkeypatch: Any) -> None:
    """A chunk ends at its number of lines or at CHUNK_BYTES of NDJSON, whichever comes first,
    so the chunks in flight stay small whatever the lines hold."""
    from server.bulk import importer

    monkeypatch.setattr(importer, "CHUNK_BYTES", CHUNK_BYTES := 1 << 20)
    big = "x" * (CHUNK_BYTES // 5)
    src = write_ndjson(tmp_path / "big.ndjson", [
        {"resourceType": "Basic", "id": f"b{i}", "code": {"text": big}} for i in range(12)])
    chunks = [chunk for chunk, _ in importer.Importer(None, None)._chunks([src])]
    sizes = [sum(len(line) for _, line in chunk) for chunk in chunks]  # type: ignore[arg-type]
    assert [len(chunk) for chunk in chunks] == [5, 5, 2]
    assert max(sizes) < CHUNK_BYTES + len(big) + 100


@pytest.mark.parametrize("gz", [False, True])
def test_chunks_of_a_large_bundle_file_end_by_size(tmp_path: Path, monkeypatch: Any,
                                                    gz: bool) -> None:
    """The entries of a collection Bundle file are chunked by the JSON they were read from as
    well (uncompressed), not by their number alone."""
    from server.bulk import importer

    monkeypatch.setattr(importer, "CHUNK_BYTES", CHUNK_BYTES := 1 << 20)
    big = "x" * (CHUNK_BYTES // 5)
    body = json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Basic", "id": f"b{i}", "code": {"text": big}}}
        for i in range(12)]}).encode()
    src = tmp_path / ("big.json.gz" if gz else "big.json")
    src.write_bytes(gzip.compress(body) if gz else body)
    chunks = [chunk for chunk, _ in importer.Importer(None, None)._chunks([src])]
    sizes = [sum(len(r) for _, r in chunk) for chunk in chunks]  # entries come as JSON
    assert sum(len(chunk) for chunk in chunks) == 12
    assert len(chunks) >= 3
    assert max(sizes) < CHUNK_BYTES + 2 * len(big) + (64 << 10)  # one entry and a read over


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    out = consilium(str(tmp_path / "nope.ndjson"), data_dir=tmp_path / "data")
    assert out.returncode == 2
    assert "no such file" in out.stderr


@pytest.mark.slow
def test_memory_stays_flat_with_file_size(tmp_path: Path) -> None:
    # Memory follows the chunk size (--chunk), not the file size: both files are several chunks.
    def peak(n: int) -> int:
        src = write_ndjson(tmp_path / f"in{n}.ndjson", [patient(i) for i in range(n)])
        code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
                "sys.exit(r.returncode)")
        out = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "server",
                              "import", "--quiet", "--data-dir", str(tmp_path / f"d{n}"),
                              "--workers", "2", "--chunk", "1000", str(src)],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.strip().splitlines()[-1])

    small, large = peak(5_000), peak(50_000)
    assert large < small * 1.5 + 20_000  # KiB: ten times the data, not ten times the memory
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


N_MANY, CHUNK_OF_MANY = 60_000, 1000


def stored_count(data: Path) -> int:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{data / 'consilium.db'}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT count(*) FROM resource").fetchone()[0])
    except sqlite3.Error:  # not created yet
        return 0


def signalled_import(tmp_path: Path, after: int, signum: int, group: bool = True
                     ) -> tuple[Path, Path, subprocess.Popen[str]]:
    """An import of N_MANY patients in chunks of CHUNK_OF_MANY, in a process group of its
    own (as a terminal's), sent ``signum`` once ``after`` resources are stored, to the whole
    group or to the importing process only: (its file, its data dir, the process)."""
    import os
    import time

    src = write_ndjson(tmp_path / "many.ndjson", [patient(i) for i in range(N_MANY)])
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "server", "import", "--quiet", "--data-dir",
                             str(data), "--workers", "2", "--chunk", str(CHUNK_OF_MANY),
                             str(src)],
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while stored_count(data) < after and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if group:
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)
    return src, data, proc


def test_an_import_killed_midway_leaves_whole_chunks_and_can_be_run_again(tmp_path: Path) -> None:
    """kill -9 of the importing process and its workers while chunks are being written: each
    chunk is one transaction, so the store holds whole chunks (resources and their index rows),
    and importing the file again completes it."""
    import signal
    import sqlite3

    from server.storage.sqlite_schema import param_id

    src, data, proc = signalled_import(tmp_path, 3 * CHUNK_OF_MANY, signal.SIGKILL)
    proc.communicate()
    conn = sqlite3.connect(data / "consilium.db")
    count = conn.execute("SELECT count(*) FROM resource").fetchone()[0]
    assert 0 < count < N_MANY and count % CHUNK_OF_MANY == 0, count
    assert conn.execute("SELECT count(DISTINCT rid) FROM idx_string WHERE pid = ?",
                        (param_id("Patient", "family"),)).fetchone()[0] == count
    conn.close()
    again = consilium(str(src), data_dir=data)
    assert again.returncode == 0, again.stderr
    assert len(read_all(data)) == N_MANY


def _workers(pid: int) -> list[int]:
    """The pool workers of the importing process ``pid`` (not its resource tracker)."""
    import os

    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            out.append(int(entry))
    return out


@pytest.mark.parametrize("atomic", [False, True])
def test_a_worker_that_dies_fails_the_import_rather_than_hang_it(
        tmp_path: Path, atomic: bool) -> None:
    """A worker killed mid-import (the kernel's out-of-memory killer does so) loses the chunk
    it held: the import stops with a message and the summary, exit 3, what was committed
    staying (nothing, with --atomic), and importing again completes it."""
    import os
    import signal
    import time

    n = 2 * N_MANY
    src = write_ndjson(tmp_path / "many.ndjson", [patient(i) for i in range(n)])
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "server", "import", "--quiet", "--data-dir",
                             str(data), "--workers", "2", "--chunk", str(CHUNK_OF_MANY),
                             "--model-check",  # slower: the worker dies mid-import
                             *(["--atomic"] if atomic else []), str(src)],
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    def cpu_seconds(pid: int) -> float:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    deadline = time.monotonic() + 120
    busy = None
    while busy is None and proc.poll() is None and time.monotonic() < deadline:
        # a worker past its warm-up that is working on a chunk (an idle one holds none)
        before = {w: cpu_seconds(w) for w in _workers(proc.pid)}
        time.sleep(0.1)
        busy = next((w for w, t in before.items()
                     if t > 1.5 and w in _workers(proc.pid) and cpu_seconds(w) - t >= 0.05),
                    None)
    assert busy is not None, "no worker was seen working"
    os.kill(busy, signal.SIGKILL)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 3, (out, err)
    assert "worker" in err and "Traceback" not in err, err
    assert "imported" in out
    count = stored_count(data)
    assert count == 0 if atomic else count % CHUNK_OF_MANY == 0 and count < n, count
    again = consilium(str(src), data_dir=data)
    assert again.returncode == 0, again.stderr
    assert len(read_all(data)) == n


@pytest.mark.parametrize(("signum", "group"), [
    (2, True),  # Ctrl-C: SIGINT to the terminal's process group
    (15, False),  # `timeout`, `docker stop`: SIGTERM to the process
    (15, True),  # a systemd service's stop: SIGTERM to every process of the service
])
def test_ctrl_c_finishes_the_chunks_under_way_says_so_and_the_import_can_be_run_again(
        tmp_path: Path, signum: int, group: bool) -> None:
    """Ctrl-C (SIGINT to the importing process and its workers) stops reading, lets the chunks
    under way be written, and exits 130 with a message and the summary, no tracebacks; run
    again, the import completes. SIGTERM likewise, exiting 143, whether it reaches the
    importing process only or its workers too."""
    src, data, proc = signalled_import(tmp_path, 2 * CHUNK_OF_MANY, signum, group)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, (out, err)
    assert "interrupted" in err and "Traceback" not in err, err
    count = stored_count(data)
    assert 0 < count < N_MANY and count % CHUNK_OF_MANY == 0, count
    assert f"imported {count:,} resources" in out, out
    again = consilium(str(src), data_dir=data)
    assert again.returncode == 0, again.stderr
    assert f"({count:,} unchanged: already stored as they are)" in again.stdout, again.stdout
    assert len(read_all(data)) == N_MANY


@pytest.mark.slow
def test_import_while_a_server_runs(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--workers", "1")
    src = write_ndjson(tmp_path / "live.ndjson", [patient(i) for i in range(300)])
    assert consilium(str(src), data_dir=server.data_dir).returncode == 0
    token = issue_token(Settings(data_dir=server.data_dir))
    r = httpx.get(server.base + "/fhir/Patient/imp-299",
                  headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert r.json()["name"][0]["family"] == "Family299"


def test_imported_bodies_are_those_an_update_stores(tmp_path: Path) -> None:
    """An import writes the JSON its workers produced as it is; the stored body is the one the
    store writes for the same resource given as a dict: server meta first, the rest unchanged."""
    from server.search.index import extract
    from server.storage.sqlite import SqliteStore

    tagged = patient(1, meta={"versionId": "7", "source": "#hohhot",
                              "tag": [{"system": "urn:t", "code": "x"}]})
    bare = {"resourceType": "Basic", "id": "imp-2", "code": {"text": "c"}}
    data = tmp_path / "data"
    out = consilium(str(write_ndjson(tmp_path / "in.ndjson", [tagged, bare])), data_dir=data)
    assert out.returncode == 0, out.stderr
    store = SqliteStore(data / "consilium.db")
    try:
        for resource in (tagged, bare):
            imported = store.read_sync(resource["resourceType"], resource["id"])
            assert imported is not None and imported.version == 1
            body = imported.body or b""
            assert body.startswith(b'{"resourceType":"%s","id":"%s","meta":{' % (
                resource["resourceType"].encode(), resource["id"].encode()))
            stored = json.loads(body)
            assert stored["meta"]["versionId"] == "1"
            assert stored["meta"].get("tag") == resource.get("meta", {}).get("tag")
            # the same resource under another id, through the store's dict path
            again = json.loads(json.dumps({**resource, "id": "copy"}))
            copy = store.run_sync(lambda tx, r=again: tx.write(
                r["resourceType"], "copy", r, extract(r), "PUT"))
            written = json.loads(copy.body or b"")
            written["id"] = resource["id"]
            written["meta"]["lastUpdated"] = stored["meta"]["lastUpdated"]
            assert written == stored
            assert list(written) == list(stored) and list(written["meta"]) == list(stored["meta"])
    finally:
        store.close_sync()


def test_a_batch_file_is_read_in_slices_each_a_batch_of_its_entries(
        tmp_path: Path, monkeypatch: Any) -> None:
    """A batch Bundle file is not read whole: its entries go in slices of BATCH_SLICE, each a
    batch Bundle with the file's envelope (its entries are independent, so the slices are the
    same batch), numbered by their first entry."""
    from server.bulk import importer

    monkeypatch.setattr(importer, "BATCH_SLICE", 3)
    entries = [{"resource": patient(i), "request": {"method": "PUT", "url": f"Patient/imp-{i}"}}
               for i in range(7)]
    src = tmp_path / "batch.json"
    src.write_text(json.dumps({"resourceType": "Bundle", "id": "b1", "type": "batch",
                               "entry": entries}))
    chunks = [chunk for chunk, _ in importer.Importer(None, None)._chunks([src])]
    items = [item for chunk in chunks for item in chunk]
    assert [n for n, _ in items] == [1, 4, 7]
    slices = [json.loads(raw) for _, raw in items]  # type: ignore[arg-type]
    assert all(s["type"] == "batch" and s["id"] == "b1" for s in slices)
    assert [len(s["entry"]) for s in slices] == [3, 3, 1]
    assert [e for s in slices for e in s["entry"]] == entries


def test_a_batch_file_reports_its_refused_entries_by_their_number(tmp_path: Path) -> None:
    """Through the command, a batch file of more entries than a slice: every entry is processed
    on its own, the refused ones listed by their place in the file."""
    n = 1_200
    entries = [{"resource": patient(i), "request": {"method": "PUT", "url": f"Patient/imp-{i}"}}
               for i in range(n)]
    for at in (2, 1_100):  # entries 3 and 1,101
        entries[at]["resource"]["gender"] = "robot"
    src = tmp_path / "batch.json"
    src.write_text(json.dumps({"resourceType": "Bundle", "type": "batch", "entry": entries}))
    out = consilium(str(src), data_dir=tmp_path / "data")
    assert out.returncode == 1, out.stderr
    robots = [line.split(": ")[:2] for line in out.stderr.splitlines() if "robot" in line]
    assert robots == [[f"{src}:3", "batch entry 3"], [f"{src}:1101", "batch entry 1101"]], \
        out.stderr
    assert len(read_all(tmp_path / "data")) == n - 2


def test_a_transaction_or_history_file_of_too_many_entries_is_refused_unread(
        tmp_path: Path) -> None:
    """A transaction is processed whole, in memory: as through the API, it may have at most
    20,000 entries. A larger one is refused before it is read, saying how to import it; so is
    a larger Bundle on a line of NDJSON, as it would be through the API."""
    from server.fhir.transaction import MAX_ENTRIES

    entry = {"resource": {"resourceType": "Basic", "code": {"text": "x"}},
             "request": {"method": "POST", "url": "Basic"}}
    for kind in ("transaction", "history"):
        src = tmp_path / f"{kind}.json"
        src.write_text(json.dumps({"resourceType": "Bundle", "type": kind,
                                   "entry": [entry] * (MAX_ENTRIES + 1)}))
        out = consilium(str(src), data_dir=tmp_path / "data")
        assert out.returncode == 1, out.stderr
        assert f"{src}:1: a {kind} Bundle may have at most 20000 entries" in out.stderr, \
            out.stderr
        assert "collection" in out.stderr and "--atomic" in out.stderr
    lines = write_ndjson(tmp_path / "lines.ndjson", [  # a line is a Bundle read whole
        patient(1), {"resourceType": "Bundle", "type": "batch",
                     "entry": [entry] * (MAX_ENTRIES + 1)}])
    out = consilium(str(lines), data_dir=tmp_path / "data")
    assert f"{lines}:2: a batch Bundle may have at most 20000 entries" in out.stderr, out.stderr
    assert stored_count(tmp_path / "data") == 1


def test_progress_is_told_in_lines_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    """A log or a pipe gets a plain progress line now and then (--progress-every), not a bar;
    --quiet silences both."""
    src = write_ndjson(tmp_path / "in.ndjson", [patient(i) for i in range(30)])
    out = consilium(str(src), "--chunk", "10", "--progress-every", "0",
                    data_dir=tmp_path / "data")
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("import: ")]
    assert len(lines) >= 3, out.stderr
    assert all("s to go" in line for line in lines if "100%" not in line), out.stderr
    assert "\r" not in out.stderr and "30 resources" in lines[-1] and "100%" in lines[-1]
    assert "0 rejected" in lines[-1]
    quiet = consilium(str(src), "--quiet", "--progress-every", "0", data_dir=tmp_path / "d2")
    assert quiet.returncode == 0 and "import: " not in quiet.stderr


def test_ndjson_from_stdin(tmp_path: Path) -> None:
    """``-`` reads NDJSON from stdin (a pipe: zcat, curl), gzipped or not; its rejected lines
    are listed under <stdin>. What is not NDJSON is refused at its first line."""
    def piped(data: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "server", "import", "--data-dir",
                               str(tmp_path / "data"), "--workers", "2", *args, "-"],
                              input=data, capture_output=True, timeout=600)

    lines = [patient(1), {**patient(2), "gender": "robot"}, patient(3)]
    text = "".join(json.dumps(x) + "\n" for x in lines).encode()
    out = piped(text)
    assert out.returncode == 1, out.stderr
    assert b"imported 2 resources" in out.stdout
    assert out.stderr.decode().splitlines()[-1].startswith("<stdin>:2: 'robot'"), out.stderr
    out = piped(gzip.compress(json.dumps(patient(4)).encode() + b"\n"))
    assert out.returncode == 0, out.stderr
    assert {i for _, i in read_all(tmp_path / "data")} == {"imp-1", "imp-3", "imp-4"}
    pretty = json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": patient(5)}]}, indent=2).encode()
    for shown in (pretty, b"\n\n" + pretty):
        out = piped(shown)
        assert out.returncode == 1
        assert out.stderr.decode().count("<stdin>:") == 1, out.stderr
        assert "one resource a line" in out.stderr.decode(), out.stderr
    out = piped(b"\n" + text)  # a blank line first: the lines keep their numbers
    assert out.stderr.decode().splitlines()[-1].startswith("<stdin>:3: 'robot'"), out.stderr
    import bz2
    out = piped(bz2.compress(text))
    assert out.returncode == 1 and b"<stdin>:1: compressed with bzip2" in out.stderr, out.stderr


def test_a_batch_file_broken_midway_is_reported_from_the_slice_it_broke_in(
        tmp_path: Path, monkeypatch: Any) -> None:
    """The slices read before the break are imported; the report names the first entry of the
    slice that could not be read whole, from which on nothing of the file is."""
    from server.bulk import importer

    monkeypatch.setattr(importer, "BATCH_SLICE", 3)
    entries = [{"resource": patient(i), "request": {"method": "PUT", "url": f"Patient/imp-{i}"}}
               for i in range(8)]
    text = json.dumps({"resourceType": "Bundle", "type": "batch", "entry": entries})
    src = tmp_path / "broken.json"
    src.write_text(text[:text.index('"imp-7"')] + "}}}")  # entry 8 (of 8) cut short
    items = [item for chunk, _ in importer.Importer(None, None)._chunks([src]) for item in chunk]
    assert [n for n, _ in items] == [1, 4, 7]  # the last, refused where it stands
    assert isinstance(items[2][1], importer.Unreadable)
    assert items[2][1].message.startswith("cannot be read from entry 7 on")


def test_a_transaction_of_absolute_request_urls_on_our_base(tmp_path: Path) -> None:
    """Request URLs may be absolute on the server's base (http.html#transaction): the import
    knows the base from --base-url (or CONSILIUM_BASE_URL), as the server does; without it they
    are refused, naming the URL."""
    base = "https://tm.example.org"
    tx = tmp_path / "absolute.json"
    tx.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(1), "request": {"method": "PUT", "url": f"{base}/fhir/Patient/imp-1"}}]}))
    out = consilium(str(tx), data_dir=tmp_path / "d1")
    assert out.returncode == 1 and f"{base}/fhir/Patient/imp-1" in out.stderr, out.stderr
    out = consilium(str(tx), "--base-url", base, data_dir=tmp_path / "d2")
    assert out.returncode == 0, out.stderr
    assert ("Patient", "imp-1") in read_all(tmp_path / "d2")


def test_a_batch_file_entry_that_cannot_be_imported_is_refused_on_its_own(
        tmp_path: Path) -> None:
    """An entry of a batch file holding a lone escaped surrogate (not text) is refused by its
    number, and the entries around it are imported; in an --atomic import a batch file is
    refused once, unread."""
    src = tmp_path / "surrogate.json"
    src.write_text('{"resourceType": "Bundle", "type": "batch", "entry": ['
                   '{"resource": {"resourceType": "Patient", "id": "s1"}, '
                   '"request": {"method": "PUT", "url": "Patient/s1"}}, '
                   '{"resource": {"resourceType": "Patient", "id": "s2", '
                   '"name": [{"family": "A\\ud800B"}]}, '
                   '"request": {"method": "PUT", "url": "Patient/s2"}}, '
                   '{"resource": {"resourceType": "Patient", "id": "s3"}, '
                   '"request": {"method": "PUT", "url": "Patient/s3"}}]}')
    out = consilium(str(src), data_dir=tmp_path / "data")
    assert out.returncode == 1, out.stderr
    (line,) = [line for line in out.stderr.splitlines() if line.startswith(str(src))]
    assert line.startswith(f"{src}:2: cannot be imported"), line
    assert set(read_all(tmp_path / "data")) == {("Patient", "s1"), ("Patient", "s3")}
    out = consilium(str(src), "--atomic", data_dir=tmp_path / "d2")
    assert out.returncode == 1
    assert [line.split(": ", 1)[0] for line in out.stderr.splitlines()
            if line.startswith(str(src))] == [f"{src}:1"], out.stderr
    assert "--atomic" in out.stderr


def test_an_internal_error_while_reading_fails_the_import_rather_than_hang_it(
        tmp_path: Path) -> None:
    """A fault of ours while the files are read (here, made to happen at the sixth line) ends
    the import with its summary and exit 3, as a store failure does."""
    src = write_ndjson(tmp_path / "in.ndjson", [patient(i) for i in range(30)])
    script = ("import sys\n"
              "from server.bulk import importer\n"
              "real = importer._ndjson_sized\n"
              "def broken(stream):\n"
              "    for i, item in enumerate(real(stream)):\n"
              "        if i == 5:\n"
              "            raise RuntimeError('a fault of ours')\n"
              "        yield item\n"
              "importer._ndjson_sized = broken\n"
              "if __name__ == '__main__':\n"
              "    from server.cli import main\n"
              "    sys.argv = ['consilium'] + sys.argv[1:]\n"
              "    sys.exit(main())\n")
    (tmp_path / "broken_reader.py").write_text(script)
    out = subprocess.run([sys.executable, str(tmp_path / "broken_reader.py"), "import",
                          "--data-dir", str(tmp_path / "data"), "--workers", "2", str(src)],
                         capture_output=True, text=True, timeout=120, cwd=Path.cwd())
    assert out.returncode == 3, out.stderr
    assert "a fault of ours" in out.stderr and "imported 0 resources" in out.stdout


def test_a_batch_file_s_chunks_hold_as_many_entries_as_a_chunk_of_lines(
        tmp_path: Path, monkeypatch: Any) -> None:
    """A slice counts as the entries it holds: a chunk of a batch file holds --chunk entries,
    not --chunk slices (the file would be read ahead whole)."""
    from server.bulk import importer

    monkeypatch.setattr(importer, "BATCH_SLICE", 2)
    src = tmp_path / "batch.json"
    src.write_text(json.dumps({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient(i), "request": {"method": "PUT", "url": f"Patient/imp-{i}"}}
        for i in range(10)]}))
    chunks = [chunk for chunk, _ in importer.Importer(None, None, chunk=4)._chunks([src])]
    assert [[n for n, _ in chunk] for chunk in chunks] == [[1, 3], [5, 7], [9]]


def test_a_batch_file_is_checked_as_a_bundle_whatever_its_entries(tmp_path: Path) -> None:
    """Its envelope is checked up front, as the API checks it, and its entry must be an array:
    a batch file with no entries to read is not passed over in silence."""
    files = {
        "object.json": {"resourceType": "Bundle", "type": "batch",
                        "entry": {"resource": patient(1)}},
        "string.json": {"resourceType": "Bundle", "type": "batch", "entry": "x"},
        "unknown.json": {"resourceType": "Bundle", "type": "batch", "bogus": 1},
        "total.json": {"resourceType": "Bundle", "type": "batch", "total": 5, "entry": []}}
    for name, body in files.items():
        (tmp_path / name).write_text(json.dumps(body))
    out = consilium(*(str(tmp_path / n) for n in files), data_dir=tmp_path / "data")
    assert out.returncode == 1, out.stderr
    said = {line.split(": ", 1)[0].rsplit("/", 1)[-1]: line.split(": ", 1)[1]
            for line in out.stderr.splitlines() if line.startswith(str(tmp_path))}
    assert set(said) == {f"{n}:1" for n in files}, out.stderr
    assert "must be a JSON array" in said["object.json:1"]
    assert "must be a JSON array" in said["string.json:1"]
    assert "bogus" in said["unknown.json:1"] and "total" in said["total.json:1"]


def test_a_deletion_imported_again_is_unchanged(tmp_path: Path) -> None:
    """Deleting what is already deleted changes nothing: the second import says so."""
    data = tmp_path / "data"
    assert consilium(str(write_ndjson(tmp_path / "p.ndjson", [patient(9)])),
                     data_dir=data).returncode == 0
    delete = tmp_path / "delete.json"
    delete.write_text(json.dumps({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "DELETE", "url": "Patient/imp-9"}}]}))
    first = consilium(str(delete), data_dir=data)
    assert "imported 1 resource (1 Bundle)" in first.stdout, first.stdout
    again = consilium(str(delete), data_dir=data)
    assert "imported 1 resource (1 unchanged: already stored as they are)" in again.stdout, \
        again.stdout
    assert ("Patient", "imp-9") not in read_all(data)


def test_progress_counts_the_chunks_written_not_those_read_ahead(tmp_path: Path) -> None:
    """Each chunk carries how far its file was read when it was made: the progress of a
    written chunk is not that of the chunks read ahead of it. An --atomic import counts what
    it has written into its transaction."""
    from server.bulk import importer

    big = "x" * 100_000
    src = write_ndjson(tmp_path / "big.ndjson", [
        {"resourceType": "Basic", "id": f"b{i}", "code": {"text": big}} for i in range(60)])
    reads = [source.read for _, sources in importer.Importer(None, None, chunk=10)._chunks([src])
             for source in sources]
    assert reads == sorted(reads) and reads[0] < src.stat().st_size / 2, reads
    assert reads[-1] == src.stat().st_size
    small = write_ndjson(tmp_path / "in.ndjson", [patient(i) for i in range(30)])
    out = consilium(str(small), "--atomic", "--chunk", "10", "--progress-every", "0",
                    data_dir=tmp_path / "data")
    assert out.returncode == 0, out.stderr
    counts = [line.split(", ")[1] for line in out.stderr.splitlines() if line.startswith("import:")]
    assert counts and counts[-1] == "30 resources" and "0 resources" not in counts, out.stderr


def test_stdin_idle_stops_on_sigterm_saying_where_to_resume(tmp_path: Path) -> None:
    """SIGTERM to the importer alone (a service manager's stop) while its producer is idle
    stops it at once, and it says through which line stdin was imported, for the rest to be
    sent again."""
    import os
    import signal
    import time

    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "server", "import", "--data-dir", str(data),
                             "--workers", "2", "--chunk", "2", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    proc.stdin.write("".join(json.dumps(patient(i)) + "\n" for i in range(3)))
    proc.stdin.flush()  # and left open, idle
    deadline = time.monotonic() + 60
    while stored_count(data) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)  # stdin still open: the producer is idle, not ended
    finally:
        proc.kill()
        proc.stdin.close()
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert proc.returncode == 143, err
    assert "stdin was imported through line 2" in err, err
    assert stored_count(data) == 2


def test_a_file_named_dash_is_a_file_when_named_so(tmp_path: Path) -> None:
    """Only ``-`` itself is stdin: ``./-`` is the file of that name."""
    write_ndjson(tmp_path / "-", [patient(1)])
    out = subprocess.run([sys.executable, "-m", "server", "import", "--data-dir",
                          str(tmp_path / "data"), "--workers", "2", "./-"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert ("Patient", "imp-1") in read_all(tmp_path / "data")
