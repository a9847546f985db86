"""FHIR XML in and out (http://hl7.org/fhir/R4/xml.html, json.html for the JSON side)."""

from __future__ import annotations

import copy
import gzip
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from server.fhir import codec
from server.fhir.structures import structures
from server.fhir.xml import XmlError, from_xml, to_xml

F = "{http://hl7.org/fhir}"
XHTML = "http://www.w3.org/1999/xhtml"
DIV = (f'<div xmlns="{XHTML}"><p class="note">Patient <b>Ali</b> &amp; <i>张伟</i>: '
       '<a href="http://example.org/?a=1&amp;b=2">record</a></p>'
       '<table border="1"><tr><td>کد</td><td>1.50</td></tr></table></div>')


def json_of(obj: Any) -> Any:
    """What the REST layer holds for this JSON: numbers as codec.loads reads them."""
    return codec.loads(codec.dumps(obj))


def roundtrip(resource: dict[str, Any], pretty: bool = False) -> dict[str, Any]:
    return from_xml(to_xml(resource, pretty=pretty))


def children(xml: bytes, *path: str) -> list[str]:
    """Local names of the child elements under the root (or under the first ``path``)."""
    el = etree.fromstring(xml)
    for name in path:
        el = el.find(F + name)
    return [etree.QName(c).localname for c in el]


# -- round trips -----------------------------------------------------------------------------

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {"versionId": "2", "lastUpdated": "2024-01-02T03:04:05.123+03:30",
             "profile": ["http://example.org/StructureDefinition/tele-patient"]},
    "text": {"status": "generated", "div": DIV},
    "contained": [{"resourceType": "Organization", "id": "org1", "name": "مرکز قلب تهران"}],
    "extension": [
        {"url": "http://example.org/care-level", "valueCode": "secondary"},
        {"url": "http://example.org/nested", "extension": [
            {"url": "weight", "valueQuantity": {"value": Decimal("70.50"), "unit": "kg"}},
            {"url": "org", "valueReference": {"reference": "#org1"}}]},
    ],
    "modifierExtension": [{"url": "http://example.org/restricted", "valueBoolean": True}],
    "identifier": [{"id": "ident-1", "system": "urn:oid:1.2.364.1", "value": "0012345678"}],
    "active": True,
    "name": [
        {"family": "رضایی", "given": ["علی", None, "محمد"],
         "_given": [None, {"extension": [{"url": "http://example.org/g", "valueString": "x"}]},
                    {"id": "g3"}]},
        {"use": "usual", "text": "张伟", "family": "张", "given": ["伟"]},
    ],
    "gender": "male",
    "birthDate": "1974-12-25",
    "_birthDate": {"id": "bd", "extension": [
        {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
         "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
    "deceasedBoolean": False,
    "multipleBirthInteger": 2,
    "contact": [{"id": "c1", "relationship": [{"text": "mother"}], "name": {"family": "Rezaei"}}],
    "managingOrganization": {"reference": "#org1"},
}

OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}], "text": "وزن"},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2024-03-01T10:00:00Z",
    "valueQuantity": {"value": Decimal("1.50"), "unit": "kg",
                      "system": "http://unitsofmeasure.org", "code": "kg"},
    "referenceRange": [{"low": {"value": 0.5}, "high": {"value": 100}}],
    "component": [
        {"code": {"text": "a"}, "valueInteger": 0},
        {"code": {"text": "b"}, "valueString": "line one\nline two\t\"quoted\" <&>"},
        {"code": {"text": "c"}, "valueRange": {"low": {"value": Decimal("3.140")}}},
        {"code": {"text": "d"}, "valueBoolean": False},
        {"code": {"text": "e"}, "valuePeriod": {"start": "2024"}},
    ],
}

BUNDLE: dict[str, Any] = {
    "resourceType": "Bundle",
    "id": "b1",
    "type": "searchset",
    "total": 3,
    "link": [{"relation": "self", "url": "http://example.org/fhir/Patient?_id=p1"}],
    "entry": [
        {"fullUrl": "http://example.org/fhir/Patient/p1", "resource": PATIENT,
         "search": {"mode": "match", "score": Decimal("1.0")}},
        {"fullUrl": "http://example.org/fhir/Observation/o1", "resource": OBSERVATION,
         "search": {"mode": "include"}},
        {"resource": {"resourceType": "OperationOutcome", "issue": [
            {"severity": "warning", "code": "processing", "diagnostics": "بیش از حد"}]},
         "search": {"mode": "outcome"}},
    ],
}

PARAMETERS: dict[str, Any] = {
    "resourceType": "Parameters",
    "parameter": [
        {"name": "amount", "valueDecimal": Decimal("3.140")},
        {"name": "when", "valuePeriod": {"start": "2024-01-01", "end": "2024-12-31"}},
        {"name": "result", "resource": OBSERVATION},
        {"name": "group", "part": [
            {"name": "flag", "valueBoolean": False},
            {"name": "patient", "resource": {"resourceType": "Patient", "id": "x", "active": True}},
        ]},
    ],
}

QUESTIONNAIRE: dict[str, Any] = {
    "resourceType": "Questionnaire",
    "status": "active",
    "item": [{"linkId": "1", "type": "group", "item": [
        {"linkId": "1.1", "type": "decimal", "required": True,
         "initial": [{"valueDecimal": Decimal("36.60")}],
         "item": [{"linkId": "1.1.1", "type": "string", "text": "توضیح"}]},
        {"linkId": "1.2", "type": "choice",
         "answerOption": [{"valueCoding": {"code": "y"}}, {"valueString": "否"}],
         "enableWhen": [{"question": "1.1", "operator": ">", "answerDecimal": 38}]},
    ]}],
}

ROUND_TRIP_CASES = {
    "patient": PATIENT,
    "observation": OBSERVATION,
    "bundle": BUNDLE,
    "parameters": PARAMETERS,
    "questionnaire": QUESTIONNAIRE,
    "minimal": {"resourceType": "Basic", "code": {"text": "x"}},
}


@pytest.mark.parametrize("pretty", [False, True], ids=["compact", "pretty"])
@pytest.mark.parametrize("name", list(ROUND_TRIP_CASES))
def test_round_trip(name: str, pretty: bool) -> None:
    resource = json_of(ROUND_TRIP_CASES[name])
    assert roundtrip(resource, pretty) == resource


def test_output_is_fhir_xml() -> None:
    xml = to_xml(json_of(PATIENT))
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = etree.fromstring(xml)
    assert root.tag == F + "Patient" and root.nsmap == {None: "http://hl7.org/fhir"}
    assert root.find(F + "id").attrib == {"value": "p1"}
    # element ids and extension urls are attributes; primitives are value attributes
    assert root.find(F + "identifier").get("id") == "ident-1"
    assert root.find(F + "contact").get("id") == "c1"
    assert root.find(F + "extension").get("url") == "http://example.org/care-level"
    assert root.find(F + "extension/" + F + "valueCode").get("value") == "secondary"
    assert root.find(F + "modifierExtension").get("url") == "http://example.org/restricted"
    # contained resources are wrapped in an element named after their type
    assert root.find(F + "contained/" + F + "Organization/" + F + "id").get("value") == "org1"
    # the narrative div keeps its own namespace
    div = root.find(F + "text/{" + XHTML + "}div")
    assert div is not None and div.find("{" + XHTML + "}p").get("class") == "note"
    # primitive extension: the element carries value, id and extension children together
    birth = root.find(F + "birthDate")
    assert birth.get("value") == "1974-12-25" and birth.get("id") == "bd"
    assert birth.find(F + "extension").get("url").endswith("patient-birthTime")
    given = root.findall(F + "name/" + F + "given")
    assert [g.get("value") for g in given[:3]] == ["علی", None, "محمد"]
    assert given[1].find(F + "extension") is not None and given[2].get("id") == "g3"


def test_bundle_and_parameters_wrap_resources_in_their_type() -> None:
    root = etree.fromstring(to_xml(json_of(BUNDLE)))
    kinds = [etree.QName(r[0]).localname for r in root.iter(F + "resource")]
    assert kinds == ["Patient", "Observation", "OperationOutcome"]
    params = etree.fromstring(to_xml(json_of(PARAMETERS)))
    inner = params.find(F + "parameter/" + F + "resource/" + F + "Observation")
    assert inner is not None and inner.find(F + "status").get("value") == "final"
    part = params.find(".//" + F + "part/" + F + "resource/" + F + "Patient")
    assert part is not None


def test_decimals_keep_their_written_precision() -> None:
    resource = json_of(OBSERVATION)
    xml = to_xml(resource)
    root = etree.fromstring(xml)
    assert root.find(F + "valueQuantity/" + F + "value").get("value") == "1.50"
    high = root.find(F + "referenceRange/" + F + "high/" + F + "value")
    assert high.get("value") == "100"  # an integer in a decimal element stays an integer
    back = from_xml(xml)
    assert back["valueQuantity"]["value"] == Decimal("1.50")
    assert str(back["valueQuantity"]["value"]) == "1.50"
    assert str(back["component"][2]["valueRange"]["low"]["value"]) == "3.140"
    assert back["referenceRange"][0]["high"]["value"] == 100
    assert codec.dumps(back) == codec.dumps(resource)


@pytest.mark.parametrize(("text", "expected"), [
    ("1.50", "1.50"), ("0.5", "0.5"), ("100", "100"), ("-0.001", "-0.001"),
    ("1E-7", "1E-7"), ("12345678901234567890.123", "12345678901234567890.123"),
])
def test_decimal_text_survives_xml_to_json(text: str, expected: str) -> None:
    xml = (f'<Observation xmlns="http://hl7.org/fhir"><status value="final"/><code/>'
           f'<valueQuantity><value value="{text}"/></valueQuantity></Observation>').encode()
    back = from_xml(xml)
    assert codec.dumps(back["valueQuantity"]["value"]) == expected.encode()
    assert back["valueQuantity"]["value"] == codec.loads(expected)


def test_value_types_are_restored_from_attributes() -> None:
    xml = b"""<Questionnaire xmlns="http://hl7.org/fhir">
      <status value="active"/>
      <item><linkId value="1"/><type value="integer"/><required value="true"/>
        <maxLength value="10"/><initial><valueInteger value="-3"/></initial></item>
    </Questionnaire>"""
    item = from_xml(xml)["item"][0]
    assert item["required"] is True
    assert item["maxLength"] == 10 and isinstance(item["maxLength"], int)
    assert item["initial"] == [{"valueInteger": -3}]
    assert item["linkId"] == "1"  # a string stays a string even when it looks like a number


def test_strings_with_markup_and_whitespace_survive() -> None:
    text = 'a & b < c > d "e" \'f\'\nnew line\ttab\r\nwindows'
    resource = {"resourceType": "Basic", "code": {"text": text}}
    assert roundtrip(resource)["code"]["text"] == text
    assert roundtrip(resource, pretty=True)["code"]["text"] == text


def test_narrative_div_is_embedded_unchanged_in_pretty_output() -> None:
    div = (f'<div xmlns="{XHTML}">\n  <p>one <b>two</b></p>\n  <ul><li>a</li><li>b</li></ul>'
           '\n</div>')
    resource = {"resourceType": "Basic", "text": {"status": "generated", "div": div},
                "code": {"text": "x"}}
    xml = to_xml(resource, pretty=True)
    assert div.encode() in xml
    assert roundtrip(resource, pretty=True)["text"]["div"] == div


def test_div_without_namespace_declaration_is_put_in_xhtml() -> None:
    resource = {"resourceType": "Basic", "code": {"text": "x"},
                "text": {"status": "generated", "div": "<div><p>hi</p></div>"}}
    root = etree.fromstring(to_xml(resource))
    assert root.find(F + "text/{" + XHTML + "}div/{" + XHTML + "}p").text == "hi"


def sample(type_name: str) -> Any:
    """A small valid value of a FHIR type, for the extension value test."""
    primitives = {
        "boolean": True, "integer": -7, "positiveInt": 5, "unsignedInt": 0,
        "decimal": Decimal("2.50"), "base64Binary": "aGVsbG8=", "instant": "2024-01-01T00:00:00Z",
        "date": "2024-02", "dateTime": "2024-02-03T04:05:06+03:30", "time": "12:30:00",
        "oid": "urn:oid:1.2.3", "uuid": "urn:uuid:2f1c3b9e-1d2a-4b7e-9a40-1c2d3e4f5a6b",
        "uri": "http://example.org", "url": "http://example.org/x",
        "canonical": "http://example.org/StructureDefinition/x", "id": "abc-1",
        "code": "final", "markdown": "**重要**", "string": "متن",
    }
    if type_name in primitives:
        return primitives[type_name]
    # a complex type: its first own element (Range -> {"low": {"value": 2.50}} …)
    for name, el in structures().types[type_name].elements.items():
        if name in ("id", "extension", "modifierExtension") or len(el.types) != 1:
            continue
        value = sample(el.types[0])
        return {name: [value] if el.is_list else value}
    raise AssertionError(type_name)


def test_extensions_with_every_kind_of_value() -> None:
    choices = structures().types["Extension"].elements["value[x]"].choices
    assert len(choices) == 50  # R4 Extension.value[x] allows 50 types
    extensions = [{"url": f"http://example.org/ext/{name}",
                   name: sample(structures().types["Extension"].elements[name].types[0])}
                  for name in choices]
    resource = json_of({"resourceType": "Basic", "code": {"text": "x"},
                        "extension": extensions, "modifierExtension": extensions[:3]})
    xml = to_xml(resource)
    root = etree.fromstring(xml)
    found = [etree.QName(e[0]).localname for e in root.findall(F + "extension")]
    assert found == choices
    assert from_xml(xml) == resource
    assert from_xml(to_xml(resource, pretty=True)) == resource


def test_every_resource_type_round_trips() -> None:
    for type_name in structures().resource_types:
        resource = {"resourceType": type_name, "id": "x1",
                    "meta": {"tag": [{"code": "t"}]}, "implicitRules": "http://example.org"}
        xml = to_xml(resource)
        assert etree.fromstring(xml).tag == F + type_name
        assert from_xml(xml) == resource, type_name


# -- known XML from the specification ---------------------------------------------------------

def test_spec_patient_birth_time() -> None:
    # xml.html / extensibility.html: an extension on a primitive
    xml = b"""<?xml version="1.0" encoding="UTF-8"?>
    <Patient xmlns="http://hl7.org/fhir">
      <id value="example"/>
      <birthDate value="1974-12-25">
        <extension url="http://hl7.org/fhir/StructureDefinition/patient-birthTime">
          <valueDateTime value="1974-12-25T14:35:45-05:00"/>
        </extension>
      </birthDate>
    </Patient>"""
    assert from_xml(xml) == {
        "resourceType": "Patient",
        "id": "example",
        "birthDate": "1974-12-25",
        "_birthDate": {"extension": [{
            "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
            "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
    }


def test_spec_primitive_with_id_and_extension() -> None:
    # json.html "Representation of primitive elements"
    xml = b"""<Patient xmlns="http://hl7.org/fhir">
      <birthDate id="314159" value="1970-03-30" >
        <extension url="http://example.org/fhir/StructureDefinition/text">
          <valueString value="Easter 1970"/>
        </extension>
      </birthDate>
    </Patient>"""
    assert from_xml(xml) == {
        "resourceType": "Patient",
        "birthDate": "1970-03-30",
        "_birthDate": {"id": "314159", "extension": [{
            "url": "http://example.org/fhir/StructureDefinition/text",
            "valueString": "Easter 1970"}]},
    }


def test_spec_repeating_primitive_with_extension() -> None:
    # json.html: a repeating primitive where only the second repeat has an extension
    xml = b"""<CapabilityStatement xmlns="http://hl7.org/fhir">
      <format value="au"/>
      <format value="nz">
        <extension url="http://hl7.org/fhir/StructureDefinition/display">
          <valueString value="New Zealand a.k.a Kiwiland"/>
        </extension>
      </format>
    </CapabilityStatement>"""
    assert from_xml(xml) == {
        "resourceType": "CapabilityStatement",
        "format": ["au", "nz"],
        "_format": [None, {"extension": [{
            "url": "http://hl7.org/fhir/StructureDefinition/display",
            "valueString": "New Zealand a.k.a Kiwiland"}]}],
    }


def test_spec_repeating_primitive_without_value() -> None:
    # json.html: a null in the value array where the repeat has only an extension
    xml = b"""<Patient xmlns="http://hl7.org/fhir"><name>
      <given value="Peter"/>
      <given><extension url="http://example.org/x"><valueCode value="unk"/></extension></given>
    </name></Patient>"""
    assert from_xml(xml)["name"] == [{
        "given": ["Peter", None],
        "_given": [None, {"extension": [{"url": "http://example.org/x", "valueCode": "unk"}]}],
    }]


def test_spec_xml_example_patient() -> None:
    # the example of xml.html (narrative shortened)
    xml = b"""<?xml version="1.0" encoding="UTF-8"?>
<Patient xmlns="http://hl7.org/fhir">
  <id value="example"/>
  <meta>
    <lastUpdated value="2014-01-30T22:35:23+11:00"/>
  </meta>
  <text>
    <status value="generated"/>
    <div xmlns="http://www.w3.org/1999/xhtml">MRN: 12345 (Acme Healthcare)</div>
  </text>
  <extension url="http://example.org/fhir/StructureDefinition/participation-agreement">
    <valueUri value="http://example.org/phr/documents/patient/general/v1"/>
  </extension>
  <identifier>
    <use value="usual"/>
    <type>
      <coding>
        <system value="http://terminology.hl7.org/CodeSystem/v2-0203"/>
        <code value="MR"/>
      </coding>
    </type>
    <system value="urn:oid:1.2.36.146.595.217.0.1"/>
    <value value="12345"/>
    <period>
      <start value="2001-05-06"/>
    </period>
    <assigner>
      <display value="Acme Healthcare"/>
    </assigner>
  </identifier>
  <active value="true"/>
  <name>
    <use value="official"/>
    <family value="Chalmers"/>
    <given value="Peter"/>
    <given value="James"/>
  </name>
  <gender value="male"/>
  <birthDate value="1974-12-25"/>
  <deceasedBoolean value="false"/>
  <managingOrganization>
    <reference value="Organization/1"/>
  </managingOrganization>
</Patient>"""
    assert from_xml(xml) == {
        "resourceType": "Patient",
        "id": "example",
        "meta": {"lastUpdated": "2014-01-30T22:35:23+11:00"},
        "text": {"status": "generated",
                 "div": f'<div xmlns="{XHTML}">MRN: 12345 (Acme Healthcare)</div>'},
        "extension": [{
            "url": "http://example.org/fhir/StructureDefinition/participation-agreement",
            "valueUri": "http://example.org/phr/documents/patient/general/v1"}],
        "identifier": [{
            "use": "usual",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                 "code": "MR"}]},
            "system": "urn:oid:1.2.36.146.595.217.0.1",
            "value": "12345",
            "period": {"start": "2001-05-06"},
            "assigner": {"display": "Acme Healthcare"}}],
        "active": True,
        "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
        "gender": "male",
        "birthDate": "1974-12-25",
        "deceasedBoolean": False,
        "managingOrganization": {"reference": "Organization/1"},
    }


def test_spec_contained_resource() -> None:
    # references.html "Contained Resources"
    xml = b"""<Condition xmlns="http://hl7.org/fhir">
      <contained>
        <Practitioner>
          <id value="p1"/>
          <name>
            <family value="Person"/>
            <given value="Patricia"/>
          </name>
        </Practitioner>
      </contained>
      <asserter>
        <reference value="#p1"/>
      </asserter>
    </Condition>"""
    assert from_xml(xml) == {
        "resourceType": "Condition",
        "contained": [{"resourceType": "Practitioner", "id": "p1",
                       "name": [{"family": "Person", "given": ["Patricia"]}]}],
        "asserter": {"reference": "#p1"},
    }


def test_spec_element_id_and_extension_url_are_attributes() -> None:
    xml = b"""<Patient xmlns="http://hl7.org/fhir">
      <identifier id="a1"><value value="1"/></identifier>
      <contact id="c1"><gender value="female"/></contact>
      <extension id="e1" url="http://example.org/x"><valueInteger value="1"/></extension>
    </Patient>"""
    assert from_xml(xml) == {
        "resourceType": "Patient",
        "identifier": [{"id": "a1", "value": "1"}],
        "contact": [{"id": "c1", "gender": "female"}],
        "extension": [{"id": "e1", "url": "http://example.org/x", "valueInteger": 1}],
    }


def test_spec_bundle_entry_resource() -> None:
    xml = b"""<Bundle xmlns="http://hl7.org/fhir">
      <type value="transaction"/>
      <entry>
        <fullUrl value="urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"/>
        <resource>
          <Patient><active value="true"/></Patient>
        </resource>
        <request><method value="POST"/><url value="Patient"/></request>
      </entry>
    </Bundle>"""
    assert from_xml(xml) == {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                   "resource": {"resourceType": "Patient", "active": True},
                   "request": {"method": "POST", "url": "Patient"}}],
    }


def test_spec_narrative_div_with_markup() -> None:
    xml = (b'<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/>'
           b'<div xmlns="http://www.w3.org/1999/xhtml"><p>Peter <b>Chalmers</b> '
           b'<a href="#x">(Jim)</a></p></div></text></Patient>')
    assert from_xml(xml)["text"] == {
        "status": "generated",
        "div": f'<div xmlns="{XHTML}"><p>Peter <b>Chalmers</b> <a href="#x">(Jim)</a></p></div>'}


# -- element order ---------------------------------------------------------------------------

def test_output_follows_definition_order_not_json_order() -> None:
    resource = json_of(PATIENT)
    reversed_keys = dict(reversed(list(resource.items())))
    reversed_keys["name"] = [dict(reversed(list(n.items()))) for n in resource["name"]]
    xml = to_xml(reversed_keys)
    assert xml == to_xml(resource)
    # Patient: id, meta, implicitRules, language, text, contained, extension, modifierExtension,
    # identifier, active, name, telecom, gender, birthDate, deceased[x], address, maritalStatus,
    # multipleBirth[x], photo, contact, communication, generalPractitioner, managingOrganization
    assert children(xml) == [
        "id", "meta", "text", "contained", "extension", "extension", "modifierExtension",
        "identifier", "active", "name", "name", "gender", "birthDate", "deceasedBoolean",
        "multipleBirthInteger", "contact", "managingOrganization"]
    # HumanName: extension, use, text, family, given, prefix, suffix, period
    assert children(xml, "name") == ["family", "given", "given", "given"]
    root = etree.fromstring(xml)
    second = root.findall(F + "name")[1]
    assert [etree.QName(c).localname for c in second] == ["use", "text", "family", "given"]


def test_order_inside_extension_and_backbone() -> None:
    resource = {"resourceType": "Patient", "contact": [{
        "period": {"end": "2020", "start": "2019"}, "gender": "female",
        "modifierExtension": [{"valueString": "m", "url": "http://example.org/m"}],
        "name": {"given": ["S"], "family": "R"},
        "extension": [{"valueBoolean": True, "extension": [
            {"valueCode": "a", "url": "u"}], "url": "http://example.org/e"}],
    }]}
    xml = to_xml(resource)
    assert children(xml, "contact") == [
        "extension", "modifierExtension", "name", "gender", "period"]
    assert children(xml, "contact", "extension") == ["extension", "valueBoolean"]
    assert children(xml, "contact", "period") == ["start", "end"]
    assert from_xml(xml) == resource


def test_exact_compact_output() -> None:
    resource = {"active": True, "id": "x", "resourceType": "Patient",
                "name": [{"given": ["A"], "family": "B"}]}
    assert to_xml(resource) == (
        b'<?xml version="1.0" encoding="UTF-8"?><Patient xmlns="http://hl7.org/fhir">'
        b'<id value="x"/><active value="true"/><name><family value="B"/><given value="A"/>'
        b'</name></Patient>')


def test_exact_pretty_output() -> None:
    resource = {"resourceType": "Patient", "id": "x",
                "_gender": {"extension": [{"url": "u", "valueCode": "c"}]}}
    assert to_xml(resource, pretty=True).decode() == """\
<?xml version="1.0" encoding="UTF-8"?>
<Patient xmlns="http://hl7.org/fhir">
  <id value="x"/>
  <gender>
    <extension url="u">
      <valueCode value="c"/>
    </extension>
  </gender>
</Patient>
"""


def test_input_order_is_tolerated() -> None:
    xml = b"""<Patient xmlns="http://hl7.org/fhir">
      <gender value="male"/><name><given value="A"/><family value="B"/></name>
      <active value="true"/><id value="x"/>
    </Patient>"""
    assert from_xml(xml) == {"resourceType": "Patient", "gender": "male",
                             "name": [{"given": ["A"], "family": "B"}],
                             "active": True, "id": "x"}


# -- tolerated extras ------------------------------------------------------------------------

def test_comments_processing_instructions_and_schema_location_are_ignored() -> None:
    xml = b"""<?xml version="1.0" encoding="UTF-8"?>
    <!-- a comment -->
    <Patient xmlns="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
             xsi:schemaLocation="http://hl7.org/fhir ../../schema/patient.xsd">
      <!-- inside --><?pi data?>
      <active value="true"/>
      <text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml">x</div></text>
    </Patient>"""
    assert from_xml(xml) == {
        "resourceType": "Patient", "active": True,
        "text": {"status": "generated", "div": f'<div xmlns="{XHTML}">x</div>'}}


def test_stored_json_inside_a_bundle_is_accepted() -> None:
    patient = {"resourceType": "Patient", "id": "p", "active": True}
    bundle = {"resourceType": "Bundle", "type": "searchset",
              "entry": [{"resource": codec.Raw(codec.dumps(patient))}]}
    assert from_xml(to_xml(bundle))["entry"] == [{"resource": patient}]


# -- hostile and malformed input -------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE Patient [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<Patient xmlns="http://hl7.org/fhir"><gender value="&lol9;"/></Patient>"""

SMALL_EXPANSION = b"""<?xml version="1.0"?>
<!DOCTYPE Patient [<!ENTITY m "male">]>
<Patient xmlns="http://hl7.org/fhir"><gender value="&m;"/></Patient>"""


@pytest.mark.parametrize("xml", [BILLION_LAUGHS, SMALL_EXPANSION], ids=["billion", "small"])
def test_entity_expansion_is_rejected(xml: bytes) -> None:
    with pytest.raises(XmlError, match="DOCTYPE"):
        from_xml(xml)


def test_external_entity_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    xml = (f'<?xml version="1.0"?><!DOCTYPE Patient [<!ENTITY xxe SYSTEM "{secret.as_uri()}">]>'
           '<Patient xmlns="http://hl7.org/fhir"><gender value="&xxe;"/>'
           '<name><text value="a"/></name></Patient>').encode()
    with pytest.raises(XmlError) as info:
        from_xml(xml)
    assert "TOP-SECRET" not in str(info.value)


@pytest.mark.parametrize("xml", [
    b'<!DOCTYPE Patient SYSTEM "http://example.invalid/fhir.dtd"><Patient '
    b'xmlns="http://hl7.org/fhir"/>',
    b'<!DOCTYPE Patient [<!ENTITY % p SYSTEM "http://example.invalid/x.dtd"> %p;]><Patient '
    b'xmlns="http://hl7.org/fhir"/>',
    # the same DOCTYPE in UTF-16 or declared UTF-7 must not slip past the check
    '<!DOCTYPE Patient [<!ENTITY m "male">]><Patient xmlns="http://hl7.org/fhir">'
    '<gender value="&m;"/></Patient>'.encode("utf-16"),
    b'<?xml version="1.0" encoding="UTF-7"?>+ADw-!DOCTYPE Patient +AFs-+ADw-!ENTITY m '
    b'"male"+AD4-+AF0-+AD4-<Patient xmlns="http://hl7.org/fhir"><gender value="&m;"/></Patient>',
], ids=["external-dtd", "parameter-entity", "utf16", "utf7"])
def test_dtds_are_rejected(xml: bytes) -> None:
    with pytest.raises(XmlError):
        from_xml(xml)


@pytest.mark.parametrize(("xml", "message"), [
    (b"", "not an XML document"),
    (b"{\"resourceType\": \"Patient\"}", "not an XML document"),
    (b'<Patient xmlns="http://hl7.org/fhir"><active value="true"/>', "malformed XML"),
    (b'<Patient xmlns="http://hl7.org/fhir"><active value="true"></Patient>', "malformed XML"),
    (b'<Patient xmlns="http://hl7.org/fhir"><active value="true"/></Patient><x/>',
     "malformed XML"),
    (b'<Patient xmlns="http://hl7.org/fhir"><given value="&nbsp;"/></Patient>', "malformed XML"),
    (b'<Unicorn xmlns="http://hl7.org/fhir"/>', "Unicorn"),
    (b'<DomainResource xmlns="http://hl7.org/fhir"/>', "DomainResource"),
    (b'<Patient><active value="true"/></Patient>', "namespace"),
    (b'<Patient xmlns="http://hl7.org/fhir/wrong"/>', "namespace"),
    (b'<Patient xmlns="http://hl7.org/fhir"><active xmlns="urn:x" value="true"/></Patient>',
     "active"),
    (b'<Patient xmlns="http://hl7.org/fhir"><colour value="red"/></Patient>', "colour"),
    (b'<Patient xmlns="http://hl7.org/fhir"><name><nickname value="x"/></name></Patient>',
     "Patient.name.nickname"),
    (b'<Patient xmlns="http://hl7.org/fhir"><birthDate value="2000"><foo/></birthDate></Patient>',
     "foo"),
    (b'<Patient xmlns="http://hl7.org/fhir"><gender value="male" lang="en"/></Patient>', "lang"),
    (b'<Patient xmlns="http://hl7.org/fhir" id="x"/>', "id"),
    (b'<Patient xmlns="http://hl7.org/fhir">Peter</Patient>', "Peter"),
    (b'<Patient xmlns="http://hl7.org/fhir"><gender value="male">male</gender></Patient>',
     "male"),
    (b'<Patient xmlns="http://hl7.org/fhir"><gender value="male"/><gender value="female"/>'
     b"</Patient>", "gender"),
    (b'<Patient xmlns="http://hl7.org/fhir"><active value="yes"/></Patient>', "yes"),
    (b'<Patient xmlns="http://hl7.org/fhir"><multipleBirthInteger value="1.5"/></Patient>',
     "1.5"),
    (b'<Observation xmlns="http://hl7.org/fhir"><valueQuantity><value value="1,5"/>'
     b"</valueQuantity></Observation>", "1,5"),
    (b'<Patient xmlns="http://hl7.org/fhir"><gender/></Patient>', "gender"),
    (b'<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/><div>x</div>'
     b"</text></Patient>", "XHTML"),
    (b'<Patient xmlns="http://hl7.org/fhir"><contained><Organization/><Organization/>'
     b"</contained></Patient>", "contained"),
    (b'<Patient xmlns="http://hl7.org/fhir"><contained><Unicorn/></contained></Patient>',
     "Unicorn"),
    (b'<Questionnaire xmlns="http://hl7.org/fhir">' + b"<item>" * 300 + b"</item>" * 300
     + b"</Questionnaire>", "malformed XML"),
])
def test_bad_input_is_rejected_with_a_clear_message(xml: bytes, message: str) -> None:
    with pytest.raises(XmlError, match=message):
        from_xml(xml)


def test_xml_error_is_a_value_error() -> None:
    assert issubclass(XmlError, ValueError)


@pytest.mark.parametrize(("resource", "message"), [
    ({"resourceType": "Unicorn"}, "Unicorn"),
    ({"active": True}, "resource type"),
    ({"resourceType": "Patient", "colour": "red"}, "colour"),
    ({"resourceType": "Patient", "_active": {"extension": []}, "_name": {}}, "_name"),
    ({"resourceType": "Patient", "name": {"family": "x"}}, "array"),
    ({"resourceType": "Patient", "gender": ["male"]}, "gender"),
    ({"resourceType": "Patient", "active": {"x": 1}}, "active"),
    ({"resourceType": "Patient", "text": {"status": "generated", "div": "<div><p>x</div>"}},
     "div"),
    ({"resourceType": "Patient", "text": {"status": "generated", "div": "<p>x</p>"}}, "div"),
    ({"resourceType": "Patient", "contained": [{"resourceType": "Nope"}]}, "Nope"),
    ({"resourceType": "Basic", "code": {"text": "bell\x07"}}, "Basic.code.text"),
])
def test_unconvertible_json_is_rejected(resource: dict[str, Any], message: str) -> None:
    with pytest.raises(XmlError, match=message):
        to_xml(resource)


# -- the official definitions as a corpus ------------------------------------------------------

def definitions() -> Path:
    default = Path(__file__).resolve().parents[2] / "shared" / "fhir-r4"
    return Path(os.environ.get("CONSILIUM_FHIR_DEFINITIONS") or default)


def same_div(a: str, b: str) -> bool:
    """XHTML equality: the div comes back re-serialised, equal as XML but not byte for byte."""
    def c14n(s: str) -> bytes:
        return etree.tostring(etree.fromstring(s), method="c14n")
    return c14n(a) == c14n(b)


def without_divs(obj: Any, divs: list[str]) -> Any:
    """``obj`` with every narrative div replaced by a marker; the divs collected in ``divs``."""
    if isinstance(obj, list):
        return [without_divs(v, divs) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for key, value in obj.items():
        if key == "div":
            divs.append(value)
            out[key] = "div"
        else:
            out[key] = without_divs(value, divs)
    return out


@pytest.mark.parametrize("name", ["profiles-types", "valuesets", "extension-definitions",
                                  "search-parameters"])
def test_official_definitions_round_trip(name: str) -> None:
    path = definitions() / f"{name}.json.gz"
    if not path.exists():
        pytest.skip(f"FHIR R4 definitions not found at {path.parent}")
    bundle = codec.loads(gzip.decompress(path.read_bytes()))
    back = from_xml(to_xml(copy.deepcopy(bundle), pretty=True))
    original_divs: list[str] = []
    back_divs: list[str] = []
    assert without_divs(back, back_divs) == without_divs(bundle, original_divs)
    assert len(back_divs) == len(original_divs)
    assert all(same_div(a, b) for a, b in zip(back_divs, original_divs, strict=True))
