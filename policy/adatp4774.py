"""NATO ADatP-4774 (STANAG 4774) confidentiality labels: our labels out, and back in.

A label here is the originator's marking (`policy.labels.Label`); systems that speak NATO's
labelling standard (XMPP with XEP-0258, guards, cross-domain gateways, Spiffing) exchange
it as a structured `originatorConfidentialityLabel` in the namespace `NAMESPACE` instead:

=====================  =======================================================
our field              ADatP-4774 element
=====================  =======================================================
scheme                 ``ConfidentialityInformation/PolicyIdentifier`` (NATO:
                       ``urn:oid:1.3.26.1.3.1``; EU and nations: ``POLICY_URN``)
level                  ``Classification`` (NATO, EU: the policy's own words,
                       ``SECRET``; a nation: its level's name, ``GEHEIM``)
REL TO                 ``Category TagName="Releasable To" Type="PERMISSIVE"``
caveats                ``Category TagName="Additional Sensitivity" Type="RESTRICTIVE"``
(NATO policy)          ``Category TagName="Context" Type="PERMISSIVE"``: ``NATO``,
                       and ``Releasable`` when there is a REL TO
sent at / by           ``CreationDateTime``, ``OriginatorID IDType="uniformResourceIdentifier"``
                       (a ``matrix:u/…`` URI)
equivalent in another  an ``alternativeConfidentialityLabel`` beside the originator's,
scheme                 which is never overwritten
=====================  =======================================================

The JSON form (`to_json`/`from_json`) has the same fields under the same names. Import is
strict: whatever cannot be represented — a mission community such as ISAF or KFOR, a
category the schemes do not define, a policy we do not know — is refused with an error that
names it; nothing, least of all a restrictive category, is dropped in silence. XML is read
with defusedxml (no DTDs, no entities, no network), at most `MAX_LABEL_BYTES`, in the exact
namespace. Pure: no I/O, no clock (times are passed in).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from xml.etree.ElementTree import Element, SubElement, register_namespace, tostring

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring

from policy.catalogue import ALLIANCES, Level, current, match_key
from policy.labels import Label, MarkingError, convert, known_caveats

NAMESPACE = "urn:nato:stanag:4774:confidentialitymetadatalabel:1:0"
# The metadata element of a STANAG 4778 binding: holds an originator's label and its
# alternatives together (one XML document has one root).
BINDING_NAMESPACE = "urn:nato:stanag:4778:bindinginformation:1:0"
NATO_POLICY = "urn:oid:1.3.26.1.3.1"
# No public object identifier is known to us for the EU's or a nation's policy: ours say
# which policy is meant, in a namespace nobody else uses.
POLICY_URN = "urn:io.github.liaison-bot:policy:{code}"
ORIGINATOR_ID_TYPE = "uniformResourceIdentifier"
MAX_LABEL_BYTES = 32_768  # a label with an alternative in each of the 38 schemes is ~17 KiB
_MAX_CATEGORIES = 16
_MAX_VALUES = 300
_MAX_TEXT = 256
_MAX_ALTERNATIVES = 64  # one per scheme is 37 (38 schemes, less its own)

RELEASABLE_TO = "Releasable To"
ADDITIONAL_SENSITIVITY = "Additional Sensitivity"
CONTEXT = "Context"
PERMISSIVE, RESTRICTIVE, INFORMATIVE = "PERMISSIVE", "RESTRICTIVE", "INFORMATIVE"
_TYPES = (PERMISSIVE, RESTRICTIVE, INFORMATIVE)
_CONTEXT_RELEASABLE = "Releasable"

# Prefixes when written out (ElementTree cannot put unqualified attributes, such as TagName,
# under a default namespace); what the prefix is called does not matter to a reader.
register_namespace("slab", NAMESPACE)
register_namespace("mb", BINDING_NAMESPACE)


class LabelImportError(MarkingError):
    """A 4774 label that cannot be represented or read; the message names the element."""


@dataclass(frozen=True, slots=True)
class Category:
    tag_name: str
    type: str  # PERMISSIVE | RESTRICTIVE | INFORMATIVE
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ConfidentialityLabel:
    """One ADatP-4774 confidentiality label, element by element."""

    policy: str  # PolicyIdentifier's text: NATO, EU, DEU …
    policy_url: str | None
    classification: str
    categories: tuple[Category, ...] = ()
    created: datetime | None = None
    originator: str | None = None  # OriginatorID, a URI


@dataclass(frozen=True, slots=True)
class LabelMetadata:
    """The originator's label and its equivalents in other schemes."""

    originator: ConfidentialityLabel
    alternatives: tuple[ConfidentialityLabel, ...] = ()


# ---------------------------------------------------------------- our label -> 4774


def policy_url(scheme: str) -> str:
    return NATO_POLICY if scheme == "NATO" else POLICY_URN.format(code=scheme)


def classification_of(level: Level) -> str:
    """The level as its policy words it: NATO and EU by their own short names (the NATO
    policy's classifications are UNCLASSIFIED … TOP SECRET), a nation by the level's name."""
    if level.scheme in ALLIANCES:
        names = current().context_exact.get(level.scheme, {})
        for key, named in names.items():
            if named == level:
                return key.upper()
    return level.name


def matrix_uri(user_id: str) -> str:
    """`@lo:example.org` as a Matrix URI (`matrix:u/lo:example.org`)."""
    return "matrix:u/" + user_id.removeprefix("@")


def _categories(level: Level, label: Label) -> tuple[Category, ...]:
    out: list[Category] = []
    if level.scheme == "NATO":
        context = ("NATO", _CONTEXT_RELEASABLE) if label.rel_to else ("NATO",)
        out.append(Category(CONTEXT, PERMISSIVE, context))
    if label.rel_to:
        out.append(Category(RELEASABLE_TO, PERMISSIVE, tuple(sorted(label.rel_to))))
    if label.caveats:
        out.append(Category(ADDITIONAL_SENSITIVITY, RESTRICTIVE, tuple(sorted(label.caveats))))
    return tuple(out)


def confidentiality_label(
    label: Label,
    level: Level | None = None,
    *,
    created: datetime | None = None,
    originator: str | None = None,
) -> ConfidentialityLabel:
    """`label` as a 4774 label; with `level` (an equivalent in another scheme), the
    alternative label that shows it there, with the same caveats and releasability."""
    shown = level or label.level
    return ConfidentialityLabel(
        policy=shown.scheme,
        policy_url=policy_url(shown.scheme),
        classification=classification_of(shown),
        categories=_categories(shown, label),
        created=created.astimezone(UTC).replace(microsecond=0) if created else None,
        originator=_originator_uri(originator),
    )


def _originator_uri(originator: str | None) -> str | None:
    """A Matrix user id becomes its `matrix:u/` URI; anything else is taken as a URI."""
    if not originator:
        return None
    return matrix_uri(originator) if originator.startswith("@") else originator


def label_metadata(
    label: Label,
    alternatives: Iterable[str] = (),
    *,
    created: datetime | None = None,
    originator: str | None = None,
) -> LabelMetadata:
    """The originator's label and one alternative per scheme in `alternatives` (other than
    its own, and only where the scheme has a level that high)."""
    alts: list[ConfidentialityLabel] = []
    for scheme in dict.fromkeys(alternatives):
        if scheme == label.scheme:
            continue
        level = convert(label, scheme)
        if level is not None:
            alts.append(confidentiality_label(label, level, created=created, originator=originator))
    return LabelMetadata(
        confidentiality_label(label, created=created, originator=originator), tuple(alts)
    )


# ---------------------------------------------------------------- 4774 -> our label


def _fail(message: str) -> LabelImportError:
    return LabelImportError(message)


def _level_of(policy: str, classification: str) -> Level:
    scheme = current().schemes.get(policy)
    if scheme is None:
        known = ", ".join(sorted(current().schemes))
        raise _fail(f"PolicyIdentifier {policy!r} is not a scheme we know (known: {known})")
    key = match_key(classification)
    found = current().context_exact.get(policy, {}).get(key)
    if found is None:
        found = next((lv for lv in current().exact.get(key, ()) if lv.scheme == policy), None)
    if found is None:
        names = ", ".join(classification_of(lv) for lv in scheme.levels)
        raise _fail(
            f"Classification {classification!r} is not a level of the {policy} policy "
            f"(levels: {names})"
        )
    return found


def _audience(value: str) -> str:
    token = value.strip().upper()
    if token in ALLIANCES or token in current().countries:
        return token
    raise _fail(
        f"Releasable To value {value!r} cannot be represented: expected an ISO 3166 trigraph, "
        "NATO or EU (mission communities and partnerships are not in the schemes)"
    )


def to_label(cl: ConfidentialityLabel, extra_caveats: Iterable[str] = ()) -> Label:
    """Our label for a 4774 label, or LabelImportError naming what it cannot represent."""
    if cl.policy_url is not None and cl.policy_url != policy_url(cl.policy):
        raise _fail(
            f"PolicyIdentifier URL {cl.policy_url!r} is not the {cl.policy} policy we know "
            f"({policy_url(cl.policy)})"
        )
    level = _level_of(cl.policy, cl.classification)
    caveat_words = {match_key(c): c for c in known_caveats(extra_caveats)}
    rel_to: set[str] = set()
    caveats: set[str] = set()
    seen: set[str] = set()
    for category in cl.categories:
        where = f"Category {category.tag_name!r} ({category.type})"
        if category.tag_name in seen:
            raise _fail(f"{where} appears twice")
        seen.add(category.tag_name)
        if category.tag_name == RELEASABLE_TO and category.type == PERMISSIVE:
            rel_to |= {_audience(v) for v in category.values}
        elif category.tag_name == ADDITIONAL_SENSITIVITY and category.type == RESTRICTIVE:
            for value in category.values:
                word = caveat_words.get(match_key(value))
                if word is None:
                    known = ", ".join(sorted(caveat_words.values()))
                    raise _fail(f"{where}: caveat {value!r} is not defined (known: {known})")
                caveats.add(word)
        elif category.tag_name == CONTEXT and category.type == PERMISSIVE:
            allowed = {cl.policy, _CONTEXT_RELEASABLE}
            for value in category.values:
                if value not in allowed:
                    known = ", ".join(sorted(allowed))
                    raise _fail(
                        f"{where}: {value!r} cannot be represented (a mission community or "
                        f"partnership the schemes do not define; known: {known})"
                    )
        else:
            raise _fail(
                f"{where} cannot be represented: the schemes define Releasable To (PERMISSIVE), "
                "Additional Sensitivity (RESTRICTIVE) and Context (PERMISSIVE)"
                + (
                    " — a restrictive category is never dropped"
                    if category.type == RESTRICTIVE
                    else ""
                )
            )
    if not seen & {RELEASABLE_TO} and any(
        c.tag_name == CONTEXT and _CONTEXT_RELEASABLE in c.values for c in cl.categories
    ):
        raise _fail("Context says Releasable but no Releasable To category names to whom")
    return Label(level, frozenset(caveats), frozenset(rel_to))


# ---------------------------------------------------------------- JSON


def _label_json(cl: ConfidentialityLabel) -> dict[str, Any]:
    policy: dict[str, Any] = {"value": cl.policy}
    if cl.policy_url:
        policy["URL"] = cl.policy_url
    info: dict[str, Any] = {"PolicyIdentifier": policy, "Classification": cl.classification}
    if cl.categories:
        info["Category"] = [
            {"TagName": c.tag_name, "Type": c.type, "GenericValue": list(c.values)}
            for c in cl.categories
        ]
    out: dict[str, Any] = {"ConfidentialityInformation": info}
    if cl.created is not None:
        out["CreationDateTime"] = _time_text(cl.created)
    if cl.originator is not None:
        out["OriginatorID"] = {"IDType": ORIGINATOR_ID_TYPE, "value": cl.originator}
    return out


def to_json(meta: LabelMetadata) -> dict[str, Any]:
    """The JSON form: {"originatorConfidentialityLabel": …, "alternativeConfidentialityLabel":
    [...]} with the XML's element and attribute names."""
    out: dict[str, Any] = {"originatorConfidentialityLabel": _label_json(meta.originator)}
    if meta.alternatives:
        out["alternativeConfidentialityLabel"] = [_label_json(a) for a in meta.alternatives]
    return out


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _fail(f"{where}: expected text, got {type(value).__name__}")
    if not value.strip():
        raise _fail(f"{where}: empty")
    if len(value) > _MAX_TEXT:
        raise _fail(f"{where}: longer than {_MAX_TEXT} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _fail(f"{where}: not valid Unicode (a lone surrogate)") from None
    return value.strip()


def _object(value: Any, where: str, allowed: Iterable[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(f"{where}: expected an object, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in set(allowed))
    if unknown:
        raise _fail(f"{where}: unknown element {unknown[0]!r} cannot be represented")
    return value


def _list(value: Any, where: str, limit: int) -> Sequence[Any]:
    if not isinstance(value, list):
        raise _fail(f"{where}: expected a list, got {type(value).__name__}")
    if len(value) > limit:
        raise _fail(f"{where}: more than {limit} entries")
    return value


def _time_text(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str, where: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _fail(f"{where}: {text!r} is not an xs:dateTime") from None
    if when.tzinfo is None:
        raise _fail(f"{where}: {text!r} has no time zone")
    return when.astimezone(UTC)


def _label_from_json(raw: Any, where: str) -> ConfidentialityLabel:
    obj = _object(raw, where, ("ConfidentialityInformation", "CreationDateTime", "OriginatorID"))
    if "ConfidentialityInformation" not in obj:
        raise _fail(f"{where}: ConfidentialityInformation is missing")
    info_where = f"{where}.ConfidentialityInformation"
    info = _object(
        obj["ConfidentialityInformation"],
        info_where,
        ("PolicyIdentifier", "Classification", "Category"),
    )
    for required in ("PolicyIdentifier", "Classification"):
        if required not in info:
            raise _fail(f"{info_where}: {required} is missing")
    policy_obj = _object(
        info["PolicyIdentifier"], f"{info_where}.PolicyIdentifier", ("value", "URL")
    )
    if "value" not in policy_obj:
        raise _fail(f"{info_where}.PolicyIdentifier: value is missing")
    policy = _text(policy_obj["value"], f"{info_where}.PolicyIdentifier")
    url = (
        _text(policy_obj["URL"], f"{info_where}.PolicyIdentifier@URL")
        if "URL" in policy_obj
        else None
    )
    categories: list[Category] = []
    for i, raw_cat in enumerate(
        _list(info.get("Category", []), f"{info_where}.Category", _MAX_CATEGORIES)
    ):
        cat_where = f"{info_where}.Category[{i}]"
        cat = _object(raw_cat, cat_where, ("TagName", "Type", "GenericValue"))
        for required in ("TagName", "Type", "GenericValue"):
            if required not in cat:
                raise _fail(f"{cat_where}: {required} is missing")
        kind = _text(cat["Type"], f"{cat_where}.Type")
        if kind not in _TYPES:
            raise _fail(f"{cat_where}.Type: {kind!r} is not PERMISSIVE, RESTRICTIVE or INFORMATIVE")
        values = tuple(
            _text(v, f"{cat_where}.GenericValue[{j}]")
            for j, v in enumerate(
                _list(cat["GenericValue"], f"{cat_where}.GenericValue", _MAX_VALUES)
            )
        )
        categories.append(Category(_text(cat["TagName"], f"{cat_where}.TagName"), kind, values))
    created = (
        _parse_time(
            _text(obj["CreationDateTime"], f"{where}.CreationDateTime"), f"{where}.CreationDateTime"
        )
        if "CreationDateTime" in obj
        else None
    )
    originator = None
    if "OriginatorID" in obj:
        origin = _object(obj["OriginatorID"], f"{where}.OriginatorID", ("IDType", "value"))
        originator = _text(origin.get("value"), f"{where}.OriginatorID")
    return ConfidentialityLabel(
        policy, url, _text(info["Classification"], f"{info_where}.Classification"),
        tuple(categories), created, originator,
    )  # fmt: skip


def from_json(raw: Any) -> LabelMetadata:
    """Read the JSON form; LabelImportError names the first thing it cannot read."""
    obj = _object(
        raw, "label", ("originatorConfidentialityLabel", "alternativeConfidentialityLabel")
    )
    if "originatorConfidentialityLabel" not in obj:
        raise _fail("label: originatorConfidentialityLabel is missing")
    originator = _label_from_json(
        obj["originatorConfidentialityLabel"], "originatorConfidentialityLabel"
    )
    alts = tuple(
        _label_from_json(a, f"alternativeConfidentialityLabel[{i}]")
        for i, a in enumerate(
            _list(
                obj.get("alternativeConfidentialityLabel", []),
                "alternativeConfidentialityLabel",
                _MAX_ALTERNATIVES,
            )
        )
    )
    return LabelMetadata(originator, alts)


# ---------------------------------------------------------------- XML


def _q(name: str, namespace: str = NAMESPACE) -> str:
    return f"{{{namespace}}}{name}"


def _label_element(cl: ConfidentialityLabel, tag: str, parent: Element | None = None) -> Element:
    root = Element(_q(tag)) if parent is None else SubElement(parent, _q(tag))
    info = SubElement(root, _q("ConfidentialityInformation"))
    policy = SubElement(info, _q("PolicyIdentifier"))
    if cl.policy_url:
        policy.set("URL", cl.policy_url)
    policy.text = cl.policy
    SubElement(info, _q("Classification")).text = cl.classification
    for category in cl.categories:
        cat = SubElement(
            info, _q("Category"), {"TagName": category.tag_name, "Type": category.type}
        )
        for value in category.values:
            SubElement(cat, _q("GenericValue")).text = value
    if cl.created is not None:
        SubElement(root, _q("CreationDateTime")).text = _time_text(cl.created)
    if cl.originator is not None:
        origin = SubElement(root, _q("OriginatorID"), {"IDType": ORIGINATOR_ID_TYPE})
        origin.text = cl.originator
    return root


def to_xml(meta: LabelMetadata) -> str:
    """A bare `originatorConfidentialityLabel`, or — with alternatives — both inside the
    metadata element of a STANAG 4778 binding."""
    if not meta.alternatives:
        root = _label_element(meta.originator, "originatorConfidentialityLabel")
    else:
        root = Element(_q("Metadata", BINDING_NAMESPACE))
        _label_element(meta.originator, "originatorConfidentialityLabel", root)
        for alt in meta.alternatives:
            _label_element(alt, "alternativeConfidentialityLabel", root)
    return tostring(root, encoding="unicode")


def _local(element: Element, where: str, namespace: str = NAMESPACE) -> str:
    tag = element.tag if isinstance(element.tag, str) else ""
    prefix = f"{{{namespace}}}"
    if not tag.startswith(prefix):
        shown = tag.split("}", 1)[-1]
        actual = tag[1:].split("}", 1)[0] if tag.startswith("{") else "no namespace"
        raise _fail(f"{where}: element {shown!r} is in {actual}, not {namespace}")
    return tag[len(prefix) :]


def _no_attributes(element: Element, where: str, allowed: Iterable[str] = ()) -> None:
    unknown = sorted(set(element.attrib) - set(allowed))
    if unknown:
        raise _fail(f"{where}: attribute {unknown[0]!r} cannot be represented")


def _element_text(element: Element, where: str) -> str:
    if len(element):
        raise _fail(f"{where}: expected text, found child elements")
    return _text(element.text or "", where)


def _label_from_xml(element: Element, where: str) -> ConfidentialityLabel:
    _no_attributes(element, where)
    children = list(element)
    if not children or _local(children[0], where) != "ConfidentialityInformation":
        raise _fail(f"{where}: ConfidentialityInformation must come first")
    info = children[0]
    _no_attributes(info, f"{where}/ConfidentialityInformation")
    policy: str | None = None
    url: str | None = None
    classification: str | None = None
    categories: list[Category] = []
    for child in info:
        name = _local(child, f"{where}/ConfidentialityInformation")
        here = f"{where}/ConfidentialityInformation/{name}"
        if name == "PolicyIdentifier" and policy is None and classification is None:
            _no_attributes(child, here, ("URL",))
            policy = _element_text(child, here)
            url = child.get("URL")
        elif name == "Classification" and policy is not None and classification is None:
            _no_attributes(child, here)
            classification = _element_text(child, here)
        elif name == "Category" and classification is not None:
            if len(categories) >= _MAX_CATEGORIES:
                raise _fail(f"{here}: more than {_MAX_CATEGORIES} categories")
            _no_attributes(child, here, ("TagName", "Type"))
            tag_name = _text(child.get("TagName", ""), f"{here}@TagName")
            kind = _text(child.get("Type", ""), f"{here}@Type")
            if kind not in _TYPES:
                raise _fail(f"{here}@Type: {kind!r} is not PERMISSIVE, RESTRICTIVE or INFORMATIVE")
            values: list[str] = []
            for value in child:
                value_where = f"{here}[{tag_name}]/{_local(value, here)}"
                if _local(value, here) != "GenericValue":
                    raise _fail(f"{value_where} cannot be represented (only GenericValue)")
                _no_attributes(value, value_where)
                values.append(_element_text(value, value_where))
                if len(values) > _MAX_VALUES:
                    raise _fail(f"{here}: more than {_MAX_VALUES} values")
            categories.append(Category(tag_name, kind, tuple(values)))
        else:
            raise _fail(f"{here} cannot be represented here (expected PolicyIdentifier, "
                        "Classification, then Category elements)")  # fmt: skip
    if policy is None or classification is None:
        missing = "PolicyIdentifier" if policy is None else "Classification"
        raise _fail(f"{where}/ConfidentialityInformation: {missing} is missing")
    created: datetime | None = None
    originator: str | None = None
    for child in children[1:]:
        name = _local(child, where)
        here = f"{where}/{name}"
        if name == "CreationDateTime" and created is None and originator is None:
            _no_attributes(child, here)
            created = _parse_time(_element_text(child, here), here)
        elif name == "OriginatorID" and originator is None:
            _no_attributes(child, here, ("IDType",))
            originator = _element_text(child, here)
        else:
            raise _fail(f"{here} cannot be represented here")
    return ConfidentialityLabel(policy, url, classification, tuple(categories), created, originator)


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _fail(
            f"label: lone surrogate U+{ord(text[exc.start]):04X} at {exc.start} (not valid Unicode)"
        ) from None


def from_xml(text: str | bytes) -> LabelMetadata:
    """Read a label (or a 4778 metadata element holding one and its alternatives) from XML;
    LabelImportError names what is wrong. Never resolves a DTD, an entity or a URL."""
    raw = text if isinstance(text, bytes) else _utf8(text)
    if len(raw) > MAX_LABEL_BYTES:
        raise _fail(f"label: {len(raw)} bytes of XML, at most {MAX_LABEL_BYTES}")
    try:
        root = fromstring(raw, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise _fail(f"label: refused unsafe XML ({type(exc).__name__})") from None
    except (ParseError, ValueError) as exc:
        raise _fail(f"label: not well-formed XML: {exc}") from None
    tag = root.tag if isinstance(root.tag, str) else ""
    if tag == _q("Metadata", BINDING_NAMESPACE):
        _no_attributes(root, "Metadata")
        originator: ConfidentialityLabel | None = None
        alts: list[ConfidentialityLabel] = []
        for child in root:
            name = _local(child, "Metadata")
            if name == "originatorConfidentialityLabel" and originator is None:
                originator = _label_from_xml(child, name)
            elif name == "alternativeConfidentialityLabel" and len(alts) < _MAX_ALTERNATIVES:
                alts.append(_label_from_xml(child, f"{name}[{len(alts)}]"))
            else:
                raise _fail(f"Metadata/{name} cannot be represented here")
        if originator is None:
            raise _fail("Metadata: originatorConfidentialityLabel is missing")
        return LabelMetadata(originator, tuple(alts))
    name = _local(root, "label")
    if name != "originatorConfidentialityLabel":
        raise _fail(f"label: the root element is {name!r}; expected originatorConfidentialityLabel")
    return LabelMetadata(_label_from_xml(root, name))


def import_label(text_or_json: object, extra_caveats: Iterable[str] = ()) -> Label:
    """Our label from the XML or the JSON form (a string starting with `{` is JSON).

    Total: whatever a message's label field holds (any member chooses it), the answer is a
    label or a LabelImportError naming what is wrong, never another exception."""
    try:
        return _import_label(text_or_json, extra_caveats)
    except RecursionError:
        raise _fail("label: nested too deeply") from None


def _import_label(text_or_json: object, extra_caveats: Iterable[str]) -> Label:
    if isinstance(text_or_json, Mapping):
        return to_label(from_json(text_or_json).originator, extra_caveats)
    if not isinstance(text_or_json, str):
        raise _fail(
            f"label: must be the XML form (a string) or the JSON form (an object), "
            f"not {type(text_or_json).__name__}"
        )
    stripped = text_or_json.lstrip()
    if stripped.startswith("{"):
        if len(stripped.encode("utf-8", "surrogatepass")) > MAX_LABEL_BYTES:
            raise _fail(f"label: more than {MAX_LABEL_BYTES} bytes of JSON")
        try:
            raw = json.loads(stripped)
        except ValueError as exc:
            raise _fail(f"label: not valid JSON: {exc}") from None
        return to_label(from_json(raw).originator, extra_caveats)
    return to_label(from_xml(text_or_json).originator, extra_caveats)


__all__ = [
    "ADDITIONAL_SENSITIVITY",
    "BINDING_NAMESPACE",
    "CONTEXT",
    "MAX_LABEL_BYTES",
    "NAMESPACE",
    "NATO_POLICY",
    "POLICY_URN",
    "RELEASABLE_TO",
    "Category",
    "ConfidentialityLabel",
    "LabelImportError",
    "LabelMetadata",
    "classification_of",
    "confidentiality_label",
    "from_json",
    "from_xml",
    "import_label",
    "label_metadata",
    "matrix_uri",
    "to_json",
    "to_label",
    "to_xml",
]
