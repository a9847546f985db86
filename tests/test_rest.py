"""The FHIR RESTful API through HTTP: http://hl7.org/fhir/R4/http.html, interaction by interaction."""

from __future__ import annotations

import base64
import json
import time

import pytest

from tests.conftest import FHIR_JSON, Fhir, issue_token

PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
    "active": True,
    "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
    "gender": "male",
    "birthDate": "1974-12-25",
    "contact": [{"name": {"family": "du Marché"}, "gender": "female"}],
}


def created(fhir: Fhir, resource: dict = PATIENT) -> dict:
    r = fhir.post(resource["resourceType"], resource)
    assert r.status_code == 201, r.text
    return r.json()


def assert_outcome(r, status: int, code: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(FHIR_JSON)
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"], body
    for issue in body["issue"]:
        assert issue["severity"] in ("fatal", "error", "warning", "information")
        assert issue["diagnostics"]
        assert "Traceback" not in issue["diagnostics"]
    if code is not None:
        assert any(i["code"] == code for i in body["issue"]), body
    return body


# -- capabilities --------------------------------------------------------------------------------

def test_metadata_is_public_and_describes_what_is_served(fhir: Fhir) -> None:
    r = fhir.get("metadata", token=None)
    assert r.status_code == 200
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1"
    assert cs["kind"] == "instance"
    rest = cs["rest"][0]
    types = {res["type"]: res for res in rest["resource"]}
    for t in ("Patient", "ServiceRequest", "Task", "Consent", "Provenance", "SearchParameter",
              "MedicinalProduct"):
        assert t in types
    codes = {i["code"] for i in types["Patient"]["interaction"]}
    assert {"read", "vread", "update", "patch", "delete", "history-instance", "history-type",
            "create", "search-type"} <= codes
    assert types["Patient"]["versioning"] == "versioned-update"
    assert types["Patient"]["conditionalDelete"] == "single"
    assert {o["name"] for o in types["Patient"]["operation"]} >= {"validate"}
    assert {i["code"] for i in rest["interaction"]} >= {"history-system"}
    assert {"application/json-patch+json", "application/merge-patch+json"} <= set(
        cs["patchFormat"])


def test_metadata_takes_summary_and_elements(fhir: Fhir) -> None:
    full = fhir.get("metadata")
    summary = fhir.get("metadata", params={"_summary": "true"})
    assert summary.status_code == 200 and summary.json()["fhirVersion"] == "4.0.1"
    assert len(summary.content) < len(full.content) / 2, (len(summary.content), len(full.content))
    elements = fhir.get("metadata", params={"_elements": "fhirVersion,format"}).json()
    assert elements["format"] and "rest" not in elements, list(elements)


def test_metadata_says_which_search_parameters_are_not_supported(fhir: Fhir) -> None:
    """Left out of a type's searchParam list, and named with the reason in the documentation:
    of the type (Location's special ``near``), or of the whole API (the full-text ones)."""
    rest = fhir.get("metadata", token=None).json()["rest"][0]
    types = {res["type"]: res for res in rest["resource"]}
    assert "near" not in {p["name"] for p in types["Location"]["searchParam"]}
    assert "near" in types["Location"]["documentation"]
    assert "special" in types["Location"]["documentation"]
    assert "documentation" not in types["Patient"]
    for code in ("_text", "_content", "_query", "_filter", "_containedType", ":in"):
        assert code in rest["documentation"]
        assert code not in {p["name"] for p in types["Patient"]["searchParam"]}


def test_metadata_lists_only_the_includes_a_search_takes(fhir: Fhir) -> None:
    """searchInclude and searchRevInclude list what a search accepts: not the parameters of
    canonical references (the URL of a definition), which are searched by that URL."""
    from server.search.index import canonical_only

    rest = fhir.get("metadata", token=None).json()["rest"][0]
    types = {res["type"]: res for res in rest["resource"]}
    assert "ActivityDefinition:composed-of" not in types["Patient"]["searchRevInclude"]
    assert "QuestionnaireResponse:questionnaire" not in types["QuestionnaireResponse"][
        "searchInclude"]
    assert "Observation:subject" in types["Patient"]["searchRevInclude"]
    for res in rest["resource"]:
        for value in res["searchInclude"][1:] + res["searchRevInclude"]:
            source, code = value.split(":")
            assert not canonical_only(source, code), (res["type"], value)
    r = fhir.get("Patient", params={"_revinclude": types["Patient"]["searchRevInclude"][0]})
    assert r.status_code == 200, r.text


def test_our_operations_have_their_definitions_at_their_urls(fhir: Fhir) -> None:
    """Every operation /metadata names with a Consilium definition can be read there, and says
    what the router serves: its code, resource types and levels."""
    rest = fhir.get("metadata").json()["rest"][0]
    declared: dict[str, set[str]] = {}
    for res in rest["resource"]:
        for op in res.get("operation", []):
            declared.setdefault(op["definition"], set()).add(res["type"])
    ours = {url: types for url, types in declared.items()
            if url.startswith("https://fhir.consilium.health/")}
    assert len(ours) >= 25
    for url, types in ours.items():
        found = fhir.get("OperationDefinition", params={"url": url}).json().get("entry", [])
        assert len(found) == 1, url
        definition = found[0]["resource"]
        assert definition["url"] == url and definition["status"] == "active"
        assert set(definition["resource"]) == types, url
        assert url.endswith(f"/{types.pop()}-{definition['code']}")
        assert definition["instance"] or definition["type"] or definition["system"]
    quality = fhir.get("OperationDefinition/Organization-quality").json()
    assert quality["instance"] and not quality["type"] and not quality["affectsState"]
    assert {(p["name"], p["use"], p["min"], p["type"]) for p in quality["parameter"]} == {
        ("period", "in", 1, "string"), ("return", "out", 1, "MeasureReport")}


def test_every_declared_interaction_is_routed(fhir: Fhir) -> None:
    """What the CapabilityStatement declares, the router serves (never 404/405 for them)."""
    from server.fhir.interactions import INTERACTIONS

    pid = created(fhir)["id"]
    for i in INTERACTIONS:
        path = (i.path.replace("{type}", "Patient").replace("{id}", pid).replace("{vid}", "1")
                .replace("{compartment}", "Observation"))
        r = fhir.request(i.method, path, json=None if i.method in ("GET", "DELETE") else
                         ({**PATIENT, "id": pid} if i.method == "PUT" else PATIENT),
                         params={"identifier": "nomatch"} if i.conditional else None,
                         headers={"Content-Type": "application/json-patch+json"}
                         if i.method == "PATCH" else None)
        assert r.status_code != 405, (i.name, r.text)
        problem = r.text if r.status_code >= 400 else ""
        assert "no FHIR endpoint" not in problem and "not supported" not in problem, (i.name,
                                                                                    r.text)


# -- authorization -------------------------------------------------------------------------------

def test_requests_without_a_token_are_refused(fhir: Fhir) -> None:
    r = fhir.get("Patient/abc", token=None)
    assert_outcome(r, 401, "login")
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_a_forged_token_is_refused(fhir: Fhir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from server.auth.keys import KeyStore
    from server.auth.tokens import TokenService

    other = TokenService(KeyStore(tmp_path / "otherkeys")).issue("mallory", "system/*.cruds")
    assert_outcome(fhir.get("Patient/abc", token=other), 401, "login")
    assert_outcome(fhir.get("Patient/abc", token="not.a.jwt"), 401, "login")


def test_an_expired_token_is_refused(fhir: Fhir, settings) -> None:  # type: ignore[no-untyped-def]
    expired = issue_token(settings, lifetime=-10)
    r = fhir.get("Patient/abc", token=expired)
    assert_outcome(r, 401, "login")
    assert "expired" in r.json()["issue"][0]["diagnostics"]


def test_scopes_limit_what_a_token_may_do(fhir: Fhir, settings) -> None:  # type: ignore[no-untyped-def]
    pid = created(fhir)["id"]
    reader = issue_token(settings, "system/Patient.read")
    assert fhir.get(f"Patient/{pid}", token=reader).status_code == 200
    assert_outcome(fhir.post("Patient", PATIENT, token=reader), 403, "forbidden")
    assert_outcome(fhir.delete(f"Patient/{pid}", token=reader), 403, "forbidden")
    obs_only = issue_token(settings, "system/Observation.cruds")
    assert_outcome(fhir.get(f"Patient/{pid}", token=obs_only), 403, "forbidden")
    v2 = issue_token(settings, "system/Patient.cr")
    assert fhir.post("Patient", PATIENT, token=v2).status_code == 201
    assert_outcome(fhir.put(f"Patient/{pid}", {**PATIENT, "id": pid}, token=v2), 403)
    # The data is unchanged by the refused writes.
    assert fhir.get(f"Patient/{pid}").json()["meta"]["versionId"] == "1"


# -- create and read -----------------------------------------------------------------------------

def test_create_assigns_id_and_version(fhir: Fhir) -> None:
    r = fhir.post("Patient", {**PATIENT, "id": "client-chosen",
                              "meta": {"versionId": "7", "lastUpdated": "2001-01-01T00:00:00Z",
                                       "tag": [{"system": "urn:t", "code": "x"}]}})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"] != "client-chosen"
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"] != "2001-01-01T00:00:00Z"
    assert body["meta"]["tag"] == [{"system": "urn:t", "code": "x"}]
    assert r.headers["location"].endswith(f"/fhir/Patient/{body['id']}/_history/1")
    assert r.headers["location"].startswith("http://testserver/fhir/")
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["last-modified"].endswith("GMT")
    read = fhir.get(f"Patient/{body['id']}")
    assert read.status_code == 200
    assert read.headers["content-type"] == "application/fhir+json; charset=utf-8"
    assert read.json() == body
    assert read.headers["etag"] == 'W/"1"'


def test_decimal_precision_survives(fhir: Fhir) -> None:
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "dose"},
           "valueQuantity": {"value": 1.50, "unit": "mg"}}
    raw = fhir.request("POST", "Observation",
                       content=b'{"resourceType":"Observation","status":"final",'
                               b'"code":{"text":"dose"},"valueQuantity":{"value":1.50,"unit":"mg"}}',
                       headers={"Content-Type": FHIR_JSON})
    assert raw.status_code == 201, raw.text
    text = fhir.get(f"Observation/{raw.json()['id']}").text
    assert '"value":1.50' in text
    assert obs["status"] == "final"


@pytest.mark.parametrize("text", [
    b'{"value":1.50}', b'{"value": 2.0 }', b'[1,-0.10]', b'{"v":12345678901234567}',
    b'{"v":0.1234567890123456}', b"1.50", b" -2.0", b'{"v":[123456789012345678901234]}',
    b'{"v":-12345678901234567890}', b'"1.50"',
])
def test_numbers_a_float_would_change_are_read_exactly(text: bytes) -> None:
    from server.fhir import codec

    assert codec.dumps(codec.loads(text)) == text.replace(b" ", b"")


@pytest.mark.parametrize("text, number", [(b'{"v":[1e3]}', "1e3"), (b'{"v":1.5E-3}', "1.5E-3"),
                                          (b"1e5", "1e5"), (b'{"v":1e400}', "1e400")])
def test_exponents_are_read_as_decimals(text: bytes, number: str) -> None:
    from decimal import Decimal

    from server.fhir import codec

    got = codec.loads(text)
    value = got if not isinstance(got, dict) else got["v"]
    value = value[0] if isinstance(value, list) else value
    assert isinstance(value, Decimal) and value == Decimal(number)


@pytest.mark.parametrize("text", [b'{"v":NaN}', b'{"v":1.50,"w":NaN}', b'[1e400,Infinity]',
                                  b'{"v":-Infinity,"w":2.0}', b'{"v":1.50', b'',
                                  b'{"v":1.50,"w":' + b"9" * 5000 + b"}"])
def test_what_json_does_not_have_is_refused(text: bytes) -> None:
    from server.fhir import codec

    with pytest.raises(codec.JsonError):
        codec.loads(text)


def nested_extensions(depth: int) -> dict:
    """A Patient whose extension holds an extension … ``depth`` levels down."""
    ext: dict = {"url": "https://fhir.consilium.health/x", "valueString": "bottom"}
    for _ in range(depth - 1):
        ext = {"url": "https://fhir.consilium.health/x", "extension": [ext]}
    return {"resourceType": "Patient", "extension": [ext]}


def test_elements_nested_too_deeply_are_refused(fhir: Fhir) -> None:
    """A resource nested deeper than any real one is a 400 naming the limit (it was a 500: the
    store could not write it), and a reasonable depth is stored."""
    r = fhir.post("Patient", content=json.dumps(nested_extensions(130)),
                  headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 400, r.text
    assert "nested" in r.json()["issue"][0]["diagnostics"], r.text
    assert fhir.post("Patient", nested_extensions(40)).status_code == 201


def test_an_integer_beyond_64_bits_is_kept(fhir: Fhir) -> None:
    big = 123456789012345678901234567890
    r = fhir.post("Observation", content=json.dumps(
        {"resourceType": "Observation", "status": "final", "code": {"text": "count"},
         "valueQuantity": {"value": big}}), headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 201, r.text
    assert str(big) in fhir.get(r.headers["Location"].split("/_history")[0]).text


def test_text_that_is_not_utf8_is_named_so(fhir: Fhir) -> None:
    from server.fhir import codec

    with pytest.raises(codec.JsonError, match=r"not UTF-8 text \(byte 13, 0xfc\)"):
        codec.loads(b'{"family":"M\xfcller"}')
    r = fhir.post("Patient", content=b'{"resourceType":"Patient","name":[{"family":"M\xfcller"}]}',
                  headers={"Content-Type": "application/fhir+json"})
    assert "not UTF-8" in assert_outcome(r, 400)["issue"][0]["diagnostics"]


def test_read_errors(fhir: Fhir) -> None:
    assert_outcome(fhir.get("Patient/does-not-exist"), 404, "not-found")
    assert_outcome(fhir.get("Spaceship/1"), 404, "not-supported")
    assert_outcome(fhir.get("Patient/" + "x" * 65), 400)
    assert_outcome(fhir.get("Patient/bad_id!"), 400)


def test_conditional_read(fhir: Fhir) -> None:
    pid = created(fhir)["id"]
    r = fhir.get(f"Patient/{pid}", headers={"If-None-Match": 'W/"1"'})
    assert r.status_code == 304
    assert r.content == b""
    assert fhir.get(f"Patient/{pid}", headers={"If-None-Match": 'W/"2"'}).status_code == 200
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 3600))
    past = "Sat, 01 Jan 2000 00:00:00 GMT"
    assert fhir.get(f"Patient/{pid}", headers={"If-Modified-Since": future}).status_code == 304
    assert fhir.get(f"Patient/{pid}", headers={"If-Modified-Since": past}).status_code == 200
    # RFC 9110 §13.1.1-3: a list of ETags, or *, and If-Modified-Since is not looked at when
    # If-None-Match is given (a stale ETag with a recent date used to get a 304).
    for etags in ('W/"9", W/"1"', "*"):
        assert fhir.get(f"Patient/{pid}", headers={"If-None-Match": etags}).status_code == 304
    fhir.put(f"Patient/{pid}", {**PATIENT, "id": pid, "active": False})
    r = fhir.get(f"Patient/{pid}", headers={"If-None-Match": 'W/"1"', "If-Modified-Since": future})
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "2", r.text


def test_history_cursors_beyond_any_version_are_refused(fhir: Fhir) -> None:
    pid = created(fhir)["id"]
    for path in (f"Patient/{pid}/_history", "Patient/_history", "_history"):
        assert_outcome(fhir.get(path, params={"_cursor": str(2**70)}), 400)


def test_meta_of_a_deleted_resource_is_gone(fhir: Fhir) -> None:
    pid = created(fhir)["id"]
    fhir.delete(f"Patient/{pid}")
    assert_outcome(fhir.get(f"Patient/{pid}/$meta"), 410)


def test_head_returns_headers_only(fhir: Fhir) -> None:
    pid = created(fhir)["id"]
    r = fhir.request("HEAD", f"Patient/{pid}")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["etag"] == 'W/"1"'


# -- update, versions ----------------------------------------------------------------------------

def test_update_creates_versions_and_vread_reads_them(fhir: Fhir) -> None:
    pid = created(fhir)["id"]
    r = fhir.put(f"Patient/{pid}", {**PATIENT, "id": pid, "gender": "other"})
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["versionId"] == "2"
    assert r.headers["etag"] == 'W/"2"'
    v1 = fhir.get(f"Patient/{pid}/_history/1")
    v2 = fhir.get(f"Patient/{pid}/_history/2")
    assert v1.json()["gender"] == "male" and v1.json()["meta"]["versionId"] == "1"
    assert v2.json()["gender"] == "other"
    assert v1.headers["etag"] == 'W/"1"'
    assert_outcome(fhir.get(f"Patient/{pid}/_history/3"), 404, "not-found")
    assert_outcome(fhir.get(f"Patient/{pid}/_history/x"), 404)


def test_update_as_create_with_a_client_id(fhir: Fhir) -> None:
    r = fhir.put("Patient/mrn-42", {**PATIENT, "id": "mrn-42"})
    assert r.status_code == 201, r.text
    assert r.headers["location"].endswith("/fhir/Patient/mrn-42/_history/1")
    assert fhir.get("Patient/mrn-42").json()["id"] == "mrn-42"


def test_an_update_that_changes_nothing_makes_no_version(fhir: Fhir) -> None:
    body = created(fhir)
    r = fhir.put(f"Patient/{body['id']}", body)
    assert r.status_code == 200
    assert r.json()["meta"]["versionId"] == "1"


def test_update_errors_leave_the_resource_as_it_was(fhir: Fhir) -> None:
    pid = created(fhir)["id"]
    assert_outcome(fhir.put(f"Patient/{pid}", {**PATIENT, "id": "other"}), 400)
    assert_outcome(fhir.put(f"Patient/{pid}", PATIENT), 400)  # no id in the body
    assert_outcome(fhir.put(f"Patient/{pid}", {**PATIENT, "resourceType": "Practitioner",
                                               "id": pid}), 400)
    assert_outcome(fhir.put(f"Patient/{pid}", {**PATIENT, "id": pid, "shoeSize": 42}), 400,
                   "structure")
    assert_outcome(fhir.put(f"Patient/{pid}", {**PATIENT, "id": pid, "gender": "robot"}), 422,
                   "code-invalid")
    r = fhir.get(f"Patient/{pid}")
    assert r.json()["meta"]["versionId"] == "1"
    assert r.json()["gender"] == "male"


def test_if_match_guards_against_lost_updates(fhir: Fhir) -> None:
    pid = created(fhir)["id"]
    ok = fhir.put(f"Patient/{pid}", {**PATIENT, "id": pid, "active": False},
                  headers={"If-Match": 'W/"1"'})
    assert ok.status_code == 200
    stale = fhir.put(f"Patient/{pid}", {**PATIENT, "id": pid, "gender": "female"},
                     headers={"If-Match": 'W/"1"'})
    assert_outcome(stale, 412)
    assert fhir.get(f"Patient/{pid}").json()["gender"] == "male"
    assert_outcome(fhir.put(f"Patient/{pid}", {**PATIENT, "id": pid},
                            headers={"If-Match": "garbage"}), 400)
    # RFC 9110 §13.1.1: a list of ETags (any of them), or * (the resource exists)
    ok = fhir.put(f"Patient/{pid}", {**PATIENT, "id": pid, "active": True},
                  headers={"If-Match": 'W/"1", W/"2"'})
    assert ok.status_code == 200, ok.text
    assert fhir.put(f"Patient/{pid}", {**PATIENT, "id": pid},
                    headers={"If-Match": "*"}).status_code == 200
    assert_outcome(fhir.put("Patient/never-was", {**PATIENT, "id": "never-was"},
                            headers={"If-Match": "*"}), 412)
    assert_outcome(fhir.delete(f"Patient/{pid}", headers={"If-Match": 'W/"1", W/"2"'}), 412)


def test_if_none_match_star_creates_only(fhir: Fhir) -> None:
    """``If-None-Match: *`` on a PUT asks to create the resource only if it does not exist
    (RFC 9110 §13.1.2: the server "MUST NOT perform the requested method" otherwise): 412
    when it exists, nothing changed; a create (201) when it does not, or is deleted."""
    star = {"If-None-Match": "*"}
    r = fhir.put("Patient/inm-1", {**PATIENT, "id": "inm-1"}, headers=star)
    assert r.status_code == 201, r.text
    assert_outcome(fhir.put("Patient/inm-1", {**PATIENT, "id": "inm-1", "active": False},
                            headers=star), 412)
    assert fhir.get("Patient/inm-1").json()["meta"]["versionId"] == "1"
    fhir.delete("Patient/inm-1")
    r = fhir.put("Patient/inm-1", {**PATIENT, "id": "inm-1"}, headers=star)
    assert r.status_code == 201, r.text
    r = fhir.post("", {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {**PATIENT, "id": "inm-1"},
         "request": {"method": "PUT", "url": "Patient/inm-1", "ifNoneMatch": "*"}}]})
    assert r.json()["entry"][0]["response"]["status"].startswith("412"), r.text
    # a version: the update is made unless that version is the current one
    current = fhir.get("Patient/inm-1").json()["meta"]["versionId"]
    assert_outcome(fhir.put("Patient/inm-1", {**PATIENT, "id": "inm-1", "active": False},
                            headers={"If-None-Match": f'W/"{current}"'}), 412)
    r = fhir.put("Patient/inm-1", {**PATIENT, "id": "inm-1", "active": False},
                 headers={"If-None-Match": 'W/"1"'})
    assert r.status_code == 200, r.text


# -- delete --------------------------------------------------------------------------------------

def test_delete_is_a_version_and_read_gives_410(fhir: Fhir) -> None:
    pid = created(fhir)["id"]
    r = fhir.delete(f"Patient/{pid}")
    assert r.status_code == 200
    assert r.headers["etag"] == 'W/"2"'
    assert_outcome(fhir.get(f"Patient/{pid}"), 410, "deleted")
    assert fhir.get(f"Patient/{pid}/_history/1").status_code == 200
    assert_outcome(fhir.get(f"Patient/{pid}/_history/2"), 410)
    again = fhir.delete(f"Patient/{pid}")
    assert again.status_code == 200 and again.headers["etag"] == 'W/"2"'
    hist = fhir.get(f"Patient/{pid}/_history").json()
    assert [e["request"]["method"] for e in hist["entry"]] == ["DELETE", "POST"]
    assert "resource" not in hist["entry"][0]
    revived = fhir.put(f"Patient/{pid}", {**PATIENT, "id": pid})
    assert revived.status_code == 201
    assert revived.json()["meta"]["versionId"] == "3"


def test_deleting_what_never_existed_is_done_already(fhir: Fhir) -> None:
    """http.html#delete: "Upon successful deletion, or if the resource does not exist at all,
    the server should return either a 200 OK ..."."""
    r = fhir.delete("Patient/never-was")
    assert_outcome(r, 200, "informational")
    assert "etag" not in r.headers
    assert fhir.get("Patient/never-was").status_code == 404  # and nothing was made up
    assert fhir.get("Patient/never-was/_history").status_code == 404


def test_delete_errors(fhir: Fhir) -> None:
    assert_outcome(fhir.delete("Patient/never-was", headers={"If-Match": 'W/"1"'}), 412)
    pid = created(fhir)["id"]
    assert_outcome(fhir.delete(f"Patient/{pid}", headers={"If-Match": 'W/"9"'}), 412)
    assert fhir.get(f"Patient/{pid}").status_code == 200


# -- patch ---------------------------------------------------------------------------------------

def test_json_patch(fhir: Fhir) -> None:
    pid = created(fhir)["id"]
    r = fhir.patch(f"Patient/{pid}", [{"op": "replace", "path": "/birthDate", "value": "1975-01-01"},
                                     {"op": "add", "path": "/name/0/given/-", "value": "Jim"}])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["birthDate"] == "1975-01-01"
    assert body["name"][0]["given"] == ["Peter", "James", "Jim"]
    assert body["meta"]["versionId"] == "2"
    assert fhir.get(f"Patient/{pid}").json()["birthDate"] == "1975-01-01"


def test_json_patch_errors_change_nothing(fhir: Fhir) -> None:
    pid = created(fhir)["id"]
    failing_test = [{"op": "test", "path": "/gender", "value": "female"},
                    {"op": "replace", "path": "/gender", "value": "female"}]
    assert_outcome(fhir.patch(f"Patient/{pid}", failing_test), 422)
    assert_outcome(fhir.patch(f"Patient/{pid}", [{"op": "replace", "path": "/gender",
                                                  "value": "robot"}]), 422, "code-invalid")
    assert_outcome(fhir.patch(f"Patient/{pid}", [{"op": "replace", "path": "/id",
                                                  "value": "other"}]), 422)
    assert_outcome(fhir.patch(f"Patient/{pid}", [{"op": "jump"}]), 400)
    assert_outcome(fhir.patch(f"Patient/{pid}", [{"op": "remove", "path": "/nothing/here"}]), 422)
    assert_outcome(fhir.patch(f"Patient/{pid}", [], headers={"Content-Type": FHIR_JSON}), 415)
    assert_outcome(fhir.patch(f"Patient/{pid}", [{"op": "replace", "path": "/active",
                                                  "value": False}],
                              headers={"If-Match": 'W/"5"'}), 412)
    assert fhir.get(f"Patient/{pid}").json()["meta"]["versionId"] == "1"
    fhir.delete(f"Patient/{pid}")
    assert_outcome(fhir.patch(f"Patient/{pid}", [{"op": "replace", "path": "/active",
                                                  "value": False}]), 410)
    assert_outcome(fhir.patch("Patient/nope", [{"op": "replace", "path": "/active",
                                                "value": False}]), 404)


# -- conditional interactions --------------------------------------------------------------------

def test_conditional_create(fhir: Fhir) -> None:
    cond = {"If-None-Exist": "identifier=urn:oid:1.2.36.146.595.217.0.1|12345"}
    first = fhir.post("Patient", PATIENT, headers=cond)
    assert first.status_code == 201
    second = fhir.post("Patient", PATIENT, headers=cond)
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    fhir.post("Patient", PATIENT)  # now two match
    assert_outcome(fhir.post("Patient", PATIENT, headers=cond), 412)
    assert_outcome(fhir.post("Patient", PATIENT, headers={"If-None-Exist": "birthdate=notadate"}),
                   400)


def test_conditional_update(fhir: Fhir) -> None:
    crit = {"identifier": "urn:sys|cu-1"}
    pat = {**PATIENT, "identifier": [{"system": "urn:sys", "value": "cu-1"}]}
    r = fhir.put("Patient", pat, params=crit)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    r = fhir.put("Patient", {**pat, "gender": "female"}, params=crit)
    assert r.status_code == 200
    assert r.json()["id"] == pid and r.json()["meta"]["versionId"] == "2"
    assert_outcome(fhir.put("Patient", {**pat, "id": "someone-else"}, params=crit), 400)
    fhir.post("Patient", pat)
    assert_outcome(fhir.put("Patient", pat, params=crit), 412)
    with_id = fhir.put("Patient", {**PATIENT, "id": "cu-new",
                                   "identifier": [{"system": "urn:sys", "value": "cu-2"}]},
                       params={"identifier": "urn:sys|cu-2"})
    assert with_id.status_code == 201 and with_id.json()["id"] == "cu-new"


def test_conditional_delete(fhir: Fhir) -> None:
    pat = {**PATIENT, "identifier": [{"system": "urn:sys", "value": "cd-1"}]}
    pid = created(fhir, pat)["id"]
    assert fhir.delete("Patient", params={"identifier": "urn:sys|none"}).status_code == 200
    r = fhir.delete("Patient", params={"identifier": "urn:sys|cd-1"})
    assert r.status_code == 200
    assert fhir.get(f"Patient/{pid}").status_code == 410
    created(fhir, {**pat, "identifier": [{"system": "urn:sys", "value": "cd-2"}]})
    created(fhir, {**pat, "identifier": [{"system": "urn:sys", "value": "cd-2"}]})
    assert_outcome(fhir.delete("Patient", params={"identifier": "urn:sys|cd-2"}), 412)


def test_conditional_delete_honours_if_match(fhir: Fhir) -> None:
    """If-Match guards a conditional delete as it guards a plain one (http.html#concurrency):
    a stale version, or no match at all, is a 412 and nothing is deleted."""
    pat = {**PATIENT, "identifier": [{"system": "urn:sys", "value": "cdm-1"}]}
    pid = created(fhir, pat)["id"]
    fhir.put(f"Patient/{pid}", {**pat, "id": pid, "active": False})
    criteria = {"identifier": "urn:sys|cdm-1"}
    assert_outcome(fhir.delete("Patient", params=criteria, headers={"If-Match": 'W/"1"'}), 412)
    assert fhir.get(f"Patient/{pid}").status_code == 200
    assert_outcome(fhir.delete("Patient", params={"identifier": "urn:sys|none"},
                               headers={"If-Match": 'W/"1"'}), 412)
    r = fhir.delete("Patient", params=criteria, headers={"If-Match": 'W/"2"'})
    assert r.status_code == 200, r.text
    assert fhir.get(f"Patient/{pid}").status_code == 410


# -- history -------------------------------------------------------------------------------------

def test_a_deletion_in_a_history_is_answered_as_the_delete_was(fhir: Fhir) -> None:
    pid = created(fhir)["id"]
    assert fhir.delete(f"Patient/{pid}").status_code == 200
    (deletion, _) = fhir.get(f"Patient/{pid}/_history").json()["entry"]
    assert deletion["request"] == {"method": "DELETE", "url": f"Patient/{pid}"}
    assert deletion["response"]["status"] == "200 OK" and "resource" not in deletion


def test_instance_type_and_system_history(fhir: Fhir) -> None:
    pid = created(fhir)["id"]
    fhir.put(f"Patient/{pid}", {**PATIENT, "id": pid, "active": False})
    oid = created(fhir, {"resourceType": "Organization", "name": "Ulaanbaatar Clinic"})["id"]
    inst = fhir.get(f"Patient/{pid}/_history").json()
    assert inst["resourceType"] == "Bundle" and inst["type"] == "history"
    assert inst["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in inst["entry"]] == ["2", "1"]
    assert inst["entry"][0]["request"] == {"method": "PUT", "url": f"Patient/{pid}"}
    assert inst["entry"][1]["request"] == {"method": "POST", "url": "Patient"}
    assert inst["entry"][1]["response"]["status"].startswith("201")
    assert inst["entry"][0]["fullUrl"] == f"http://testserver/fhir/Patient/{pid}"
    typ = fhir.get("Patient/_history").json()
    assert {e["resource"]["resourceType"] for e in typ["entry"]} == {"Patient"}
    system = fhir.get("_history", params={"_count": "3"}).json()
    assert system["entry"][0]["resource"]["id"] == oid  # newest first, across types
    assert [e["resource"]["resourceType"] for e in system["entry"]] == \
        ["Organization", "Patient", "Patient"]
    assert_outcome(fhir.get("Patient/missing/_history"), 404)


def test_history_since_at_and_paging(fhir: Fhir) -> None:
    first = created(fhir)
    cut = first["meta"]["lastUpdated"]
    time.sleep(0.01)
    ids = [created(fhir)["id"] for _ in range(5)]
    since = fhir.get("Patient/_history", params={"_since": cut}).json()
    assert len(since["entry"]) == 6  # _since includes versions at that instant
    later = fhir.get("Patient/_history", params={"_since": fhir.get(f"Patient/{ids[0]}").json()
                                                  ["meta"]["lastUpdated"]}).json()
    assert len(later["entry"]) == 5
    page = fhir.get("Patient/_history", params={"_count": "2"}).json()
    seen = [e["resource"]["id"] for e in page["entry"]]
    assert len(seen) == 2
    while True:
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not nxt:
            break
        created(fhir)  # data changing while paging must not shift the pages
        page = fhir.get(nxt[0]).json()
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
    assert seen == list(reversed([first["id"], *ids]))
    assert_outcome(fhir.get("Patient/_history", params={"_since": "yesterday"}), 400)
    assert_outcome(fhir.get("Patient/_history", params={"_count": "-1"}), 400)
    at = fhir.get(f"Patient/{ids[0]}/_history", params={"_at": "2000-01-01"}).json()
    assert "entry" not in at


def test_history_at_is_a_period(fhir: Fhir) -> None:
    """http.html#history: _at gives the versions "current at some point during the time period
    specified in the date time value", read as a date search reads it."""
    v1 = created(fhir)
    v2 = fhir.put(f"Patient/{v1['id']}", {**v1, "birthDate": "1990-01-02"}).json()
    v3 = fhir.put(f"Patient/{v1['id']}", {**v2, "birthDate": "1990-01-03"}).json()

    def versions(at: str) -> set[str]:
        page = fhir.get(f"Patient/{v1['id']}/_history", params={"_at": at}).json()
        return {e["resource"]["meta"]["versionId"] for e in page.get("entry", [])}

    assert v3["meta"]["versionId"] == "3", v3
    year = v1["meta"]["lastUpdated"][:4]
    assert versions(year) == {"1", "2", "3"}
    assert "1" in versions(v1["meta"]["lastUpdated"])  # current from that very instant
    assert "3" in versions(v3["meta"]["lastUpdated"])
    assert versions(f"{int(year) + 1}") == {"3"}
    assert_outcome(fhir.get(f"Patient/{v1['id']}/_history", params={"_at": "ge2020"}), 400)


# -- Prefer, formats, _summary, _elements ---------------------------------------------------------

def test_prefer_return(fhir: Fhir) -> None:
    minimal = fhir.post("Patient", PATIENT, headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.content == b""
    assert minimal.headers["location"]
    oo = fhir.post("Patient", PATIENT, headers={"Prefer": "return=OperationOutcome"})
    assert oo.status_code == 201 and oo.json()["resourceType"] == "OperationOutcome"
    rep = fhir.post("Patient", PATIENT, headers={"Prefer": "return=representation"})
    assert rep.json()["resourceType"] == "Patient"


def test_pretty_summary_and_elements(fhir: Fhir) -> None:
    pid = created(fhir)["id"]
    pretty = fhir.get(f"Patient/{pid}", params={"_pretty": "true"})
    assert pretty.text.startswith("{\n  ")
    summary = fhir.get(f"Patient/{pid}", params={"_summary": "true"}).json()
    assert "contact" not in summary  # Patient.contact is not a summary element
    assert summary["name"] and summary["birthDate"]
    assert any(t["code"] == "SUBSETTED" for t in summary["meta"]["tag"])
    elements = fhir.get(f"Patient/{pid}", params={"_elements": "name"}).json()
    assert set(elements) == {"resourceType", "id", "meta", "name"}
    data = fhir.get(f"Patient/{pid}", params={"_summary": "data"}).json()
    assert "contact" in data
    assert_outcome(fhir.get(f"Patient/{pid}", params={"_summary": "maybe"}), 400)


def test_format_negotiation(fhir: Fhir) -> None:
    pid = created(fhir)["id"]
    assert fhir.get(f"Patient/{pid}", params={"_format": "json"}).json()["id"] == pid
    r = fhir.get(f"Patient/{pid}", headers={"Accept": "application/json"})
    assert r.status_code == 200 and r.json()["id"] == pid
    # RFC 7231 §5.3.2: the highest quality wins, whatever the order; q=0 means "not this"
    for accept, kind in (("application/fhir+xml;q=0.5, application/fhir+json;q=0.9", "json"),
                         ("application/fhir+json;q=0, application/fhir+xml", "xml"),
                         ("application/fhir+json; q=0.8, application/fhir+xml", "xml"),
                         ("text/html, application/fhir+json;q=0.1", "json")):
        r = fhir.get(f"Patient/{pid}", headers={"Accept": accept})
        assert r.status_code == 200 and kind in r.headers["content-type"], (accept, r.headers)
    assert_outcome(fhir.get(f"Patient/{pid}", params={"_format": "text/html"}), 406)
    assert_outcome(fhir.request("POST", "Patient", content=b"name=x",
                                headers={"Content-Type": "text/plain"}), 415)


def test_xml_in_and_out(fhir: Fhir) -> None:
    xml = (b'<Patient xmlns="http://hl7.org/fhir"><active value="true"/>'
           b'<name><family value="Chalmers"/><given value="Peter"/></name>'
           b'<birthDate value="1974-12-25"/></Patient>')
    r = fhir.request("POST", "Patient", content=xml,
                     headers={"Content-Type": "application/fhir+xml",
                              "Accept": "application/fhir+xml"})
    assert r.status_code == 201, r.text
    assert r.headers["content-type"].startswith("application/fhir+xml")
    assert b"<birthDate value=\"1974-12-25\"/>" in r.content
    pid = r.headers["location"].split("/")[-3]
    as_json = fhir.get(f"Patient/{pid}").json()
    assert as_json["name"] == [{"family": "Chalmers", "given": ["Peter"]}]
    assert as_json["active"] is True
    err = fhir.request("POST", "Patient", content=b"<Patient><oops",
                       headers={"Content-Type": "application/fhir+xml"})
    assert_outcome(err, 400)


def test_binary_in_its_native_form(fhir: Fhir) -> None:
    pdf = b"%PDF-1.4 consultation report"
    r = fhir.request("POST", "Binary", content=pdf, headers={"Content-Type": "application/pdf"})
    assert r.status_code == 201, r.text
    bid = r.json()["id"]
    native = fhir.get(f"Binary/{bid}", headers={"Accept": "application/pdf"})
    assert native.status_code == 200
    assert native.content == pdf
    assert native.headers["content-type"] == "application/pdf"
    as_fhir = fhir.get(f"Binary/{bid}").json()
    assert as_fhir["contentType"] == "application/pdf"
    assert base64.b64decode(as_fhir["data"]) == pdf


# -- errors --------------------------------------------------------------------------------------

def test_malformed_bodies(fhir: Fhir) -> None:
    assert_outcome(fhir.request("POST", "Patient", content=b"{not json",
                                headers={"Content-Type": FHIR_JSON}), 400, "structure")
    assert_outcome(fhir.request("POST", "Patient", content=b"[1,2]",
                                headers={"Content-Type": FHIR_JSON}), 400)
    assert_outcome(fhir.request("POST", "Patient", content=b"",
                                headers={"Content-Type": FHIR_JSON}), 400)
    assert_outcome(fhir.post("Patient", {"resourceType": "Observation", "status": "final",
                                         "code": {"text": "x"}}), 400)
    body = assert_outcome(fhir.post("Patient", {**PATIENT, "birthDate": "1974-13-45"}), 400)
    assert any("Patient.birthDate" in e for i in body["issue"] for e in i.get("expression", []))
    body = assert_outcome(fhir.post("Patient", {**PATIENT, "unknownThing": 1}), 400, "structure")
    assert any("unknownThing" in e for i in body["issue"] for e in i.get("expression", []))


def test_wrong_methods_are_405(fhir: Fhir) -> None:
    r = fhir.delete("metadata")
    assert_outcome(r, 405)
    assert "GET" in r.headers["allow"]
    r = fhir.post("Patient/abc", PATIENT)
    assert_outcome(r, 405)
    assert set(r.headers["allow"].split(", ")) >= {"GET", "PUT", "DELETE", "PATCH"}
    assert_outcome(fhir.get("Patient/abc/def/ghi/jkl"), 404)
    assert_outcome(fhir.post("Patient/$nonsense", PATIENT), 404)


def test_oversized_body_is_refused(http, token) -> None:  # type: ignore[no-untyped-def]
    big = b'{"resourceType":"Patient","text":"' + b"x" * (65 * 1024 * 1024) + b'"}'
    r = http.post("/fhir/Patient", content=big, headers={"Authorization": f"Bearer {token}",
                                                         "Content-Type": FHIR_JSON})
    assert_outcome(r, 413)


# -- operations ----------------------------------------------------------------------------------

def test_validate_operation(fhir: Fhir) -> None:
    ok = fhir.post("Patient/$validate", PATIENT)
    assert ok.status_code == 200
    assert all(i["severity"] == "information" for i in ok.json()["issue"])
    bad = fhir.post("Patient/$validate", {**PATIENT, "gender": "robot"})
    assert bad.status_code == 200
    assert any(i["severity"] == "error" and i["code"] == "code-invalid"
               for i in bad.json()["issue"])
    params = {"resourceType": "Parameters",
              "parameter": [{"name": "resource", "resource": {**PATIENT, "active": "yes"}}]}
    assert any(i["severity"] == "error" for i in fhir.post("Patient/$validate", params)
               .json()["issue"])
    pid = created(fhir)["id"]
    inst = fhir.post(f"Patient/{pid}/$validate", {**PATIENT, "id": pid})
    assert inst.status_code == 200
    # mode=delete asks whether the instance may be deleted: no resource to send (R4
    # Resource-validate), in the URL or in Parameters
    for r in (fhir.post(f"Patient/{pid}/$validate?mode=delete", content=b""),
              fhir.post(f"Patient/{pid}/$validate", {"resourceType": "Parameters", "parameter": [
                  {"name": "mode", "valueCode": "delete"}]})):
        assert r.status_code == 200, r.text
        assert "may be deleted" in r.json()["issue"][0]["diagnostics"], r.text
    assert_outcome(fhir.post("Patient/nope/$validate?mode=delete", content=b""), 404)
    # $validate never stores anything
    assert len(fhir.get("Patient/_history").json()["entry"]) == 1


def test_meta_operation(fhir: Fhir) -> None:
    pid = created(fhir, {**PATIENT, "meta": {"tag": [{"system": "urn:t", "code": "vip"}]}})["id"]
    r = fhir.get(f"Patient/{pid}/$meta")
    assert r.status_code == 200
    assert r.json()["parameter"][0]["valueMeta"]["tag"] == [{"system": "urn:t", "code": "vip"}]


# -- operations endpoints ------------------------------------------------------------------------

def test_healthz_and_metrics(fhir: Fhir, http) -> None:  # type: ignore[no-untyped-def]
    assert http.get("/healthz").json()["status"] == "ok"
    pid = created(fhir)["id"]
    fhir.get(f"Patient/{pid}")
    fhir.get("Patient/nope")
    text = http.get("/metrics").text
    assert 'consilium_http_requests_total{interaction="read",status="200"} 1.0' in text
    assert 'consilium_http_requests_total{interaction="read",status="404"} 1.0' in text
    assert 'consilium_http_request_duration_seconds_bucket{interaction="create",le=' in text


def test_jwks_publishes_the_verification_key(http, token) -> None:  # type: ignore[no-untyped-def]
    import json

    keys = http.get("/auth/jwks").json()["keys"]
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["kid"] in {k["kid"] for k in keys}
    assert all("d" not in k for k in keys)  # no private parts


def test_openapi_lists_the_fhir_paths(http) -> None:  # type: ignore[no-untyped-def]
    paths = http.get("/openapi.json").json()["paths"]
    assert "get" in paths["/fhir/{type}/{id}"]
    assert "patch" in paths["/fhir/{type}/{id}"]
    assert "post" in paths["/fhir/{type}/$validate"]


@pytest.mark.parametrize("type_", ["Patient", "Practitioner", "PractitionerRole", "Organization",
                                   "OrganizationAffiliation", "HealthcareService", "Location",
                                   "Endpoint", "Consent", "Schedule", "Group", "Account"])
def test_minimal_resources_of_domain_types_round_trip(fhir: Fhir, type_: str) -> None:
    minimal = {
        "Endpoint": {"status": "active", "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7-fhir-rest"},
                     "payloadType": [{"text": "FHIR"}], "address": "https://example.org/fhir"},
        "Consent": {"status": "active", "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
                    "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}]},
        "Schedule": {"actor": [{"reference": "Practitioner/p1"}]},
        "Group": {"type": "person", "actual": True},
        "Account": {"status": "active"},
    }.get(type_, {})
    r = fhir.post(type_, {"resourceType": type_, **minimal})
    assert r.status_code == 201, r.text
    assert fhir.get(f"{type_}/{r.json()['id']}").json() == r.json()


def test_numbers_survive_a_round_trip_whatever_their_form() -> None:
    """Documents of numbers in every form JSON allows (integers of any length, fractions with
    and without trailing zeros, exponents), read and written again: each number keeps its value
    and its digits (an exponent may come out in another form: 186E+20 as 1.86E+22)."""
    import json
    import random
    from decimal import Decimal
    from typing import Any

    from server.fhir import codec

    def digits(text: bytes) -> Any:
        return json.loads(text, parse_float=lambda s: Decimal(s).as_tuple(),
                          parse_int=lambda s: Decimal(s).as_tuple())

    rng = random.Random(7)

    def number() -> str:
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 22)))
        whole = digits.lstrip("0") or "0"
        sign = rng.choice(["", "-"]) if whole != "0" else ""
        text = sign + whole
        if rng.random() < 0.6:
            text += "." + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 18)))
        if rng.random() < 0.2:
            text += rng.choice("eE") + rng.choice(["", "+", "-"]) + str(rng.randint(0, 400))
        return text

    for _ in range(3000):
        numbers = [number() for _ in range(rng.randint(1, 4))]
        text = ('{"a":[' + ",".join(numbers) + '],"b":{"c":' + numbers[0] + ',"d":"x"}}').encode()
        written = codec.dumps(codec.loads(text))
        assert digits(written) == digits(text), text
        if b"e" not in text.lower():
            assert written == text
