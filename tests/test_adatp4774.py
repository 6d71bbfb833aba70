"""ADatP-4774 labels: round trips of every marking the grammar accepts, the element
structure, real labels from an open-source implementation (Spiffing), and a fuzzed importer."""

from __future__ import annotations

import contextlib
import json
import tomllib
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from xml.etree.ElementTree import Element

import pytest
from defusedxml.ElementTree import fromstring
from hypothesis import given, settings
from hypothesis import strategies as st

from policy import CATALOGUE, Label, Level, MarkingError, parse_marking
from policy.adatp4774 import (
    BINDING_NAMESPACE,
    MAX_LABEL_BYTES,
    NAMESPACE,
    NATO_POLICY,
    LabelImportError,
    from_json,
    from_xml,
    import_label,
    label_metadata,
    to_json,
    to_label,
    to_xml,
)
from tests.fuzzing import any_text

SPIFFING = Path(__file__).parent / "data" / "spiffing"
LEVELS: list[Level] = sorted(lv for s in CATALOGUE.schemes.values() for lv in s.levels)
AUDIENCE_TOKENS = ["NATO", "EU", *sorted(CATALOGUE.countries)]
SCHEMES = sorted(CATALOGUE.schemes)
WHEN = datetime(2026, 12, 3, 14, 5, tzinfo=UTC)

labels = st.builds(
    Label,
    st.sampled_from(LEVELS),
    st.frozensets(st.sampled_from(list(CATALOGUE.default_caveats)), max_size=3),
    st.frozensets(st.sampled_from(AUDIENCE_TOKENS), max_size=6),
)


def test_every_scheme_and_level_is_covered() -> None:
    """The levels the round trips below run on are every level of the scheme data, read
    here from the data file itself (not from the catalogue LEVELS is built from)."""
    data = tomllib.loads(files("policy").joinpath("data/schemes.toml").read_text("utf-8"))
    in_data = [
        (raw["code"], lv["rank"], lv["name"]) for raw in data["schemes"] for lv in raw["levels"]
    ]
    assert sorted((lv.scheme, lv.rank, lv.name) for lv in LEVELS) == sorted(in_data)
    assert set(SCHEMES) == {raw["code"] for raw in data["schemes"]} == {
        "NATO", "EU",
        # the 27 EU member states (Council Decision 2013/488/EU, Appendix B)
        "AUT", "BEL", "BGR", "CYP", "CZE", "DEU", "DNK", "ESP", "EST", "FIN", "FRA", "GRC",
        "HRV", "HUN", "IRL", "ITA", "LTU", "LUX", "LVA", "MLT", "NLD", "POL", "PRT", "ROU",
        "SVK", "SVN", "SWE",
        # the NATO members outside the EU
        "ALB", "CAN", "GBR", "ISL", "MKD", "MNE", "NOR", "TUR", "USA",
    }  # fmt: skip


@pytest.mark.parametrize("level", LEVELS, ids=lambda lv: lv.banner)
def test_each_level_round_trips(level: Level) -> None:
    label = Label(level)
    meta = label_metadata(label, SCHEMES, created=WHEN, originator="@lo:example.org")
    assert import_label(to_xml(meta)) == label
    assert import_label(json.dumps(to_json(meta))) == label
    for alternative in meta.alternatives:  # each alternative reads as a label of its scheme
        assert to_label(alternative).scheme == alternative.policy


@settings(max_examples=400)
@given(labels, st.lists(st.sampled_from(SCHEMES), max_size=3))
def test_export_import_round_trip(label: Label, alternatives: list[str]) -> None:
    """Whatever the grammar accepts (the banner parses back to it) survives 4774 both ways,
    and the originator's label is never replaced by an alternative."""
    assert parse_marking(label.banner) == label
    meta = label_metadata(label, alternatives, created=WHEN, originator="@lo:example.org")
    assert import_label(to_xml(meta)) == label
    assert import_label(to_json(meta)) == label
    assert from_xml(to_xml(meta)) == meta
    assert from_json(json.loads(json.dumps(to_json(meta)))) == meta


def _children(element: Element) -> list[str]:
    return [child.tag.split("}", 1)[1] for child in element]


@given(labels)
def test_exported_xml_has_the_4774_element_structure(label: Label) -> None:
    root = fromstring(to_xml(label_metadata(label, created=WHEN, originator="@a:b")))
    assert root.tag == f"{{{NAMESPACE}}}originatorConfidentialityLabel"
    assert _children(root) == ["ConfidentialityInformation", "CreationDateTime", "OriginatorID"]
    info = root[0]
    names = _children(info)
    assert names[:2] == ["PolicyIdentifier", "Classification"]
    assert set(names[2:]) <= {"Category"}
    for element in root.iter():
        assert element.tag.startswith(f"{{{NAMESPACE}}}"), element.tag
    for category in info.findall(f"{{{NAMESPACE}}}Category"):
        assert set(category.attrib) == {"TagName", "Type"}
        assert category.get("Type") in ("PERMISSIVE", "RESTRICTIVE", "INFORMATIVE")
        assert _children(category) and set(_children(category)) == {"GenericValue"}
    caveats = info.find(f"{{{NAMESPACE}}}Category[@TagName='Additional Sensitivity']")
    assert (caveats is not None) == bool(label.caveats)
    if caveats is not None:
        assert caveats.get("Type") == "RESTRICTIVE"
    rel = info.find(f"{{{NAMESPACE}}}Category[@TagName='Releasable To']")
    assert (rel is not None) == bool(label.rel_to)
    originator = root.find(f"{{{NAMESPACE}}}OriginatorID")
    assert originator is not None and originator.text == "matrix:u/a:b"


def test_alternatives_ride_in_a_4778_metadata_element() -> None:
    label = parse_marking("GEHEIM // REL TO NATO", "DEU")
    xml = to_xml(label_metadata(label, ["NATO", "EU"], created=WHEN))
    root = fromstring(xml)
    assert root.tag == f"{{{BINDING_NAMESPACE}}}Metadata"
    assert _children(root) == [
        "originatorConfidentialityLabel",
        "alternativeConfidentialityLabel",
        "alternativeConfidentialityLabel",
    ]
    meta = from_xml(xml)
    assert meta.originator.policy == "DEU" and meta.originator.classification == "GEHEIM"
    assert [(a.policy, a.classification) for a in meta.alternatives] == [
        ("NATO", "SECRET"),
        ("EU", "SECRET"),
    ]
    assert meta.alternatives[0].policy_url == NATO_POLICY


# ---------------------------------------------------------------- interop: Spiffing


def _spiffing(n: int) -> str:
    return (SPIFFING / f"nato-4774-17-{n}.nato").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("n", "banner"),
    [(2, "NATO UNCLASSIFIED"), (4, "NATO RESTRICTED // REL TO CHE, JPN, NATO, UKR")],
)
def test_spiffing_labels_we_can_represent(n: int, banner: str) -> None:
    label = import_label(_spiffing(n))
    assert label.banner == banner
    # and what we write for it reads back the same
    assert import_label(to_xml(label_metadata(label))) == label


@pytest.mark.parametrize(
    ("n", "reason"),
    [
        (1, "Releasable To value 'ISAF' cannot be represented"),
        (3, "Category 'Administrative' (INFORMATIVE) cannot be represented"),
        (5, "Context' (PERMISSIVE): 'EAPC' cannot be represented (a mission community"),
        (6, "Context' (PERMISSIVE): 'KFOR' cannot be represented"),
    ],
)
def test_spiffing_labels_we_cannot_represent_are_refused_by_name(n: int, reason: str) -> None:
    with pytest.raises(LabelImportError) as info:
        import_label(_spiffing(n))
    assert reason in str(info.value)


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ('<originatorConfidentialityLabel xmlns="urn:other"/>', "is in urn:other, not urn:nato"),
        ("<originatorConfidentialityLabel/>", "is in no namespace"),
        (
            f'<alternativeConfidentialityLabel xmlns="{NAMESPACE}"/>',
            "expected originatorConfidentialityLabel",
        ),
        (
            f'<originatorConfidentialityLabel xmlns="{NAMESPACE}"><ConfidentialityInformation>'
            "<PolicyIdentifier>NATO</PolicyIdentifier><Classification>SECRET</Classification>"
            '<Category TagName="Mission" Type="RESTRICTIVE"><GenericValue>X</GenericValue>'
            "</Category></ConfidentialityInformation></originatorConfidentialityLabel>",
            "a restrictive category is never dropped",
        ),
        (
            f'<originatorConfidentialityLabel xmlns="{NAMESPACE}"><ConfidentialityInformation>'
            "<PolicyIdentifier>NATO</PolicyIdentifier><Classification>SECRET</Classification>"
            '<Category TagName="Additional Sensitivity" Type="RESTRICTIVE"><GenericValue>'
            "SIOP</GenericValue></Category></ConfidentialityInformation>"
            "</originatorConfidentialityLabel>",
            "caveat 'SIOP' is not defined",
        ),
        (
            f'<originatorConfidentialityLabel xmlns="{NAMESPACE}"><ConfidentialityInformation>'
            "<PolicyIdentifier>XYZ</PolicyIdentifier><Classification>SECRET</Classification>"
            "</ConfidentialityInformation></originatorConfidentialityLabel>",
            "PolicyIdentifier 'XYZ' is not a scheme we know",
        ),
        (
            f'<originatorConfidentialityLabel xmlns="{NAMESPACE}"><ConfidentialityInformation>'
            '<PolicyIdentifier URL="urn:oid:9.9">NATO</PolicyIdentifier>'
            "<Classification>SECRET</Classification>"
            "</ConfidentialityInformation></originatorConfidentialityLabel>",
            "PolicyIdentifier URL 'urn:oid:9.9' is not the NATO policy we know",
        ),
        (
            f'<originatorConfidentialityLabel xmlns="{NAMESPACE}"><ConfidentialityInformation>'
            "<PolicyIdentifier>NATO</PolicyIdentifier><Classification>GEHEIM</Classification>"
            "</ConfidentialityInformation></originatorConfidentialityLabel>",
            "Classification 'GEHEIM' is not a level of the NATO policy",
        ),
        (
            f'<originatorConfidentialityLabel xmlns="{NAMESPACE}"><ConfidentialityInformation>'
            "<PolicyIdentifier>NATO</PolicyIdentifier><Classification>SECRET</Classification>"
            "<PrivacyMark>IN CONFIDENCE</PrivacyMark>"
            "</ConfidentialityInformation></originatorConfidentialityLabel>",
            "PrivacyMark cannot be represented",
        ),
        (
            '<!DOCTYPE x [<!ENTITY e "boom">]>'
            f'<originatorConfidentialityLabel xmlns="{NAMESPACE}">&e;</originatorConfidentialityLabel>',
            "refused unsafe XML",
        ),
        ("<a>" * 3 + "unclosed", "not well-formed XML"),
        ("x" * (MAX_LABEL_BYTES + 1), f"at most {MAX_LABEL_BYTES}"),
    ],
)
def test_what_cannot_be_read_is_refused_by_name(document: str, reason: str) -> None:
    with pytest.raises(LabelImportError) as info:
        import_label(document)
    assert reason in str(info.value)


def test_an_external_entity_is_never_fetched(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET CONTENT")
    document = (
        f'<!DOCTYPE x [<!ENTITY e SYSTEM "file://{secret}">]>'
        f'<originatorConfidentialityLabel xmlns="{NAMESPACE}">&e;</originatorConfidentialityLabel>'
    )
    with pytest.raises(LabelImportError) as info:
        import_label(document)
    assert "TOP SECRET CONTENT" not in str(info.value)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({}, "originatorConfidentialityLabel is missing"),
        ({"originatorConfidentialityLabel": {}}, "ConfidentialityInformation is missing"),
        ({"originatorConfidentialityLabel": [], "x": 1}, "unknown element 'x'"),
        (
            {
                "originatorConfidentialityLabel": {
                    "ConfidentialityInformation": {"PolicyIdentifier": {"value": "NATO"}}
                }
            },
            "Classification is missing",
        ),
        (
            {
                "originatorConfidentialityLabel": {
                    "ConfidentialityInformation": {
                        "PolicyIdentifier": {"value": "NATO"},
                        "Classification": 3,
                    }
                }
            },
            "Classification: expected text, got int",
        ),
        (
            {
                "originatorConfidentialityLabel": {
                    "ConfidentialityInformation": {
                        "PolicyIdentifier": {"value": "NATO"},
                        "Classification": "SECRET",
                        "Category": [
                            {"TagName": "Releasable To", "Type": "MAYBE", "GenericValue": []}
                        ],
                    }
                }
            },
            "'MAYBE' is not PERMISSIVE, RESTRICTIVE or INFORMATIVE",
        ),
        (
            {
                "originatorConfidentialityLabel": {
                    "ConfidentialityInformation": {
                        "PolicyIdentifier": {"value": "NATO"},
                        "Classification": "SECRET",
                    },
                    "CreationDateTime": "yesterday",
                }
            },
            "'yesterday' is not an xs:dateTime",
        ),
    ],
)
def test_json_that_cannot_be_read_is_refused_by_name(raw: object, reason: str) -> None:
    with pytest.raises(LabelImportError) as info:
        import_label(json.dumps(raw))
    assert reason in str(info.value)


@settings(max_examples=300)
@given(st.one_of(any_text, st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_the_importer_is_total_on_any_text(text: str) -> None:
    """Any text reads as a label or is refused with MarkingError: never another exception."""
    with contextlib.suppress(MarkingError):
        import_label(text)


@settings(max_examples=300)
@given(labels, st.data())
def test_the_importer_is_total_on_mangled_labels(label: Label, data: st.DataObject) -> None:
    """A real label with one piece cut out or replaced: read, or refused by name."""
    xml = to_xml(label_metadata(label, ["NATO"], created=WHEN))
    start = data.draw(st.integers(0, len(xml)))
    end = data.draw(st.integers(start, min(len(xml), start + 40)))
    mangled = xml[:start] + data.draw(any_text) + xml[end:]
    try:
        import_label(mangled)
    except MarkingError as exc:
        assert str(exc)


# ---------------------------------------------------------------- CLI


def test_cli_export_then_import(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bot.cli import main

    runner = CliRunner()
    exported = runner.invoke(
        main,
        [
            "label",
            "export",
            "GEHEIM // REL TO NATO, UKR",
            "--scheme",
            "DEU",
            "--alternative",
            "NATO",
        ],
    )
    assert exported.exit_code == 0, exported.output
    assert "<slab:alternativeConfidentialityLabel>" in exported.stdout
    imported = runner.invoke(main, ["label", "import", "-"], input=exported.stdout)
    assert imported.exit_code == 0, imported.output
    assert json.loads(imported.stdout)["banner"] == "DEU GEHEIM // REL TO NATO, UKR"

    as_json = runner.invoke(main, ["label", "export", "NATO SECRET // ATOMAL", "--format", "json"])
    path = tmp_path / "label.json"
    path.write_text(as_json.stdout)
    imported = runner.invoke(main, ["label", "import", str(path)])
    assert json.loads(imported.stdout)["banner"] == "NATO SECRET // ATOMAL"


def test_cli_refusals_name_the_problem() -> None:
    from click.testing import CliRunner

    from bot.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["label", "import", str(SPIFFING / "nato-4774-17-6.nato")])
    assert result.exit_code == 2
    assert "'KFOR' cannot be represented" in result.stderr
    result = runner.invoke(main, ["label", "export", "COSMIC TOP SECRET", "--alternative", "BEL"])
    assert result.exit_code == 0  # BEL TRÈS SECRET
    result = runner.invoke(main, ["label", "export", "NATO SECRET", "--alternative", "XYZ"])
    assert result.exit_code == 2 and "unknown scheme 'XYZ'" in result.stderr
    result = runner.invoke(main, ["label", "export", "DEU GEHEIM", "--format", "yaml"])
    assert result.exit_code == 2


def test_a_configured_caveat_round_trips_where_it_is_configured() -> None:
    label = parse_marking("NATO SECRET // ALPHA", extra_caveats=["ALPHA"])
    xml = to_xml(label_metadata(label))
    assert import_label(xml, extra_caveats=["alpha"]) == label
    with pytest.raises(LabelImportError, match="caveat 'ALPHA' is not defined"):
        import_label(xml)  # a bot without that caveat refuses rather than dropping it
