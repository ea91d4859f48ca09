"""Detection of personal data, special-category data and HIPAA identifiers in a training-data schema.

A column is flagged by its **name** (tokens such as ``email``, ``ssn``, ``dob``, ``zip``, ``diagnosis``) and,
when sample values are given, by its **values** (e-mail, phone, SSN, dates, ZIP codes, IP addresses, URLs,
payment card numbers that pass the Luhn check, VINs). A value pattern counts when at least
``min_match_fraction`` of the non-empty sampled values match it.

Each category maps to the HIPAA Safe Harbor identifier it is (45 CFR 164.514(b)(2)(i)(A)-(R)), to GDPR
Art. 9 special categories, and to CCPA "sensitive personal information" (Cal. Civ. Code 1798.140(ae)).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastml.errors import InvalidInput

# The 18 Safe Harbor identifiers, 45 CFR 164.514(b)(2)(i).
SAFE_HARBOR = {
    "A": "names",
    "B": "geographic subdivisions smaller than a state (street address, city, county, ZIP code)",
    "C": "all elements of dates (except year) related to an individual; ages over 89",
    "D": "telephone numbers",
    "E": "fax numbers",
    "F": "e-mail addresses",
    "G": "social security numbers",
    "H": "medical record numbers",
    "I": "health plan beneficiary numbers",
    "J": "account numbers",
    "K": "certificate/license numbers",
    "L": "vehicle identifiers and serial numbers, including license plates",
    "M": "device identifiers and serial numbers",
    "N": "web URLs",
    "O": "IP addresses",
    "P": "biometric identifiers, including finger and voice prints",
    "Q": "full-face photographs and comparable images",
    "R": "any other unique identifying number, characteristic or code",
}


@dataclasses.dataclass(frozen=True)
class Category:
    """What a kind of column is, for each regime."""

    name: str
    description: str
    direct_identifier: bool = False  # identifies a person on its own
    safe_harbor: str | None = None  # HIPAA identifier letter
    special: str | None = None  # GDPR Art. 9 category
    ccpa_sensitive: bool = False
    health: bool = False  # health information (PHI when combined with an identifier)


CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in [
        Category("name", "person's name", True, "A"),
        Category("address", "street address or city", True, "B"),
        Category("zip", "ZIP / postal code", False, "B"),
        Category("geolocation", "precise geolocation (lat/long)", False, "B", ccpa_sensitive=True),
        Category("date_of_birth", "date of birth", False, "C"),
        Category("date", "date related to an individual (admission, discharge, death, visit)", False, "C"),
        Category("age", "age (Safe Harbor: ages over 89)", False, "C"),
        Category("phone", "telephone number", True, "D"),
        Category("fax", "fax number", True, "E"),
        Category("email", "e-mail address", True, "F"),
        Category("ssn", "social security / national ID number", True, "G", ccpa_sensitive=True),
        Category("medical_record_number", "medical record number", True, "H"),
        Category("health_plan_number", "health plan beneficiary number", True, "I"),
        Category("account_number", "account / payment card number", True, "J", ccpa_sensitive=True),
        Category(
            "license_number",
            "certificate / licence number (driver's licence, passport)",
            True,
            "K",
            ccpa_sensitive=True,
        ),
        Category("vehicle_id", "vehicle identifier (VIN, licence plate)", True, "L"),
        Category("device_id", "device identifier or serial number", True, "M"),
        Category("url", "web URL", False, "N"),
        Category("ip_address", "IP address", True, "O"),
        Category("biometric", "biometric identifier", True, "P", "biometric data", True),
        Category("photo", "full-face photograph", True, "Q", "biometric data", True),
        Category("unique_id", "other unique identifying number (customer / patient / user id)", True, "R"),
        Category("race_ethnicity", "racial or ethnic origin", special="racial or ethnic origin", ccpa_sensitive=True),
        Category(
            "religion",
            "religious or philosophical beliefs",
            special="religious or philosophical beliefs",
            ccpa_sensitive=True,
        ),
        Category("political", "political opinions", special="political opinions"),
        Category("trade_union", "trade union membership", special="trade union membership", ccpa_sensitive=True),
        Category("genetic", "genetic data", special="genetic data", ccpa_sensitive=True, health=True),
        Category(
            "health",
            "health data (diagnoses, medications, procedures, lab results)",
            special="data concerning health",
            ccpa_sensitive=True,
            health=True,
        ),
        Category(
            "sexual_orientation",
            "sex life or sexual orientation",
            special="sex life or sexual orientation",
            ccpa_sensitive=True,
        ),
        Category("gender", "sex / gender"),
        Category("financial", "income, balance or other financial situation"),
        Category("nationality", "nationality or citizenship"),
    ]
}

# Column-name patterns, matched against the lower-cased name with separators normalised to "_".
_NAME_PATTERNS: list[tuple[str, str]] = [
    ("email", r"(^|_)e_?mail(_|$)|email"),
    ("fax", r"(^|_)fax(_|$)"),
    ("phone", r"phone|(^|_)tel(_|$)|telephone|mobile|msisdn"),
    ("ssn", r"(^|_)ssn(_|$)|social_?sec|national_?id|(^|_)nin(_|$)|tax_?id|(^|_)tin(_|$)"),
    ("date_of_birth", r"(^|_)dob(_|$)|birth_?date|date_?of_?birth|birthday|(^|_)born"),
    ("date", r"(admi(t|ssion)|discharge|death|visit|encounter|service|appointment)_?(date|dt|time|ts)|(^|_)dod(_|$)"),
    ("age", r"(^|_)age(_|_years|_yrs|$)"),
    ("zip", r"(^|_)zip|postcode|postal_?code"),
    ("geolocation", r"(^|_)lat(itude)?(_|$)|(^|_)lon(g|gitude)?(_|$)|geoloc|gps"),
    ("address", r"address|street|(^|_)city(_|$)|county|(^|_)addr(_|$)"),
    ("medical_record_number", r"(^|_)mrn(_|$)|medical_?record|chart_?(no|num|number|id)"),
    (
        "health_plan_number",
        r"health_?plan|insurance_?(id|no|num|number)|member_?id|beneficiary|medicaid|medicare_?(id|no|number)",
    ),
    ("account_number", r"account_?(no|num|number|id)|(^|_)iban(_|$)|card_?(no|num|number)|credit_?card|(^|_)pan(_|$)"),
    ("license_number", r"licen[cs]e_?(no|num|number|id)|passport|drivers?_?licen"),
    ("vehicle_id", r"(^|_)vin(_|$)|licen[cs]e_?plate|vehicle_?id"),
    ("device_id", r"device_?(id|serial)|serial_?(no|num|number)|(^|_)imei(_|$)|(^|_)udid(_|$)|mac_?addr"),
    ("url", r"(^|_)url(_|$)|website|homepage"),
    ("ip_address", r"(^|_)ip(_?addr(ess)?)?(_|$)|ipv[46]"),
    ("biometric", r"fingerprint|voice_?print|retina|iris_?scan|biometric|face_?(embedding|template)"),
    ("photo", r"photo|face_?image|portrait|selfie"),
    (
        "name",
        r"(^|_)(first|last|full|given|family|middle|sur|maiden|patient|customer|client|user)_?name(_|$)|^(full_?)?name$|surname",
    ),
    (
        "unique_id",
        r"(patient|customer|client|user|member|person|employee|applicant|subject)_?(id|no|num|number|key)(_|$)",
    ),
    ("race_ethnicity", r"(^|_)race(_|$)|ethnic"),
    ("religion", r"religio|(^|_)faith(_|$)|belief"),
    ("political", r"politic|party_?affil"),
    ("trade_union", r"union_?member|trade_?union"),
    ("genetic", r"genetic|genotype|(^|_)dna(_|$)|(^|_)snp"),
    (
        "health",
        r"diagnos|(^|_)icd(_?\d+)?(_|$)|(^|_)dx(_|$)|medication|prescri|procedure|(^|_)cpt(_|$)|(^|_)lab_|"
        r"disab|pregnan|(^|_)hiv(_|$)|blood_?pressure|comorbid|(medical|chronic|health)_?condition|symptom|clinical|charlson|(^|_)bmi(_|$)|"
        r"length_?of_?stay|readmi|num_?lab_?procedures|num_?medications",
    ),
    ("sexual_orientation", r"sexual|orientation"),
    ("gender", r"(^|_)(sex|gender)(_|$)"),
    ("financial", r"income|salary|(^|_)wage|balance|(^|_)debt|net_?worth"),
    ("nationality", r"nationality|citizenship|country_?of_?birth"),
]
_NAME_RES = [(cat, re.compile(rx)) for cat, rx in _NAME_PATTERNS]

# Value patterns (the whole value must match).
_VALUE_PATTERNS: list[tuple[str, re.Pattern]] = [
    ("email", re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")),
    ("ssn", re.compile(r"(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}")),
    # North American numbers, and international ones written with "+", bare or grouped ("+44 20 7946 0958");
    # the digit count of the latter (E.164: 8 to 15) is checked in classify_values.
    (
        "phone",
        re.compile(
            r"(\+?1[ .\-]?)?\(?\d{3}\)?[ .\-]?\d{3}[ .\-]\d{4}|\+[1-9]\d{7,14}|\+[1-9]\d{0,3}([ .\-]\d{1,6}){2,6}"
        ),
    ),
    (
        "date",
        re.compile(
            # ISO 8601 date or timestamp, with "Z" or a UTC offset (what isoformat() writes for aware times).
            r"(19|20)\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])([T ][0-9:.]+(Z|[+\-]\d\d:?\d\d)?)?|"
            r"(0?[1-9]|1[0-2])/(0?[1-9]|[12]\d|3[01])/(19|20)\d\d"
        ),
    ),
    ("zip", re.compile(r"\d{5}(-\d{4})?")),
    (
        "ip_address",
        re.compile(
            r"((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)|"
            r"[0-9a-fA-F]{0,4}(:[0-9a-fA-F]{0,4}){2,7}"
        ),
    ),
    ("url", re.compile(r"https?://[^\s]+|www\.[^\s]+")),
    ("vehicle_id", re.compile(r"[A-HJ-NPR-Z0-9]{17}")),
    # 4-4-4-4 style cards, and American Express, printed 4-6-5 (both Luhn-checked in classify_values).
    ("account_number", re.compile(r"\d{4}[ \-]?\d{4}[ \-]?\d{4}[ \-]?\d{1,7}|3[47]\d\d[ \-]?\d{6}[ \-]?\d{5}")),
]


@dataclasses.dataclass(frozen=True)
class ColumnFinding:
    """What was found in one column, and why."""

    column: str
    categories: tuple[str, ...]
    evidence: tuple[str, ...]

    @property
    def direct_identifier(self) -> bool:
        return any(CATEGORIES[c].direct_identifier for c in self.categories)

    @property
    def safe_harbor(self) -> tuple[str, ...]:
        return tuple(sorted({CATEGORIES[c].safe_harbor for c in self.categories if CATEGORIES[c].safe_harbor}))

    @property
    def special(self) -> tuple[str, ...]:
        return tuple(sorted({CATEGORIES[c].special for c in self.categories if CATEGORIES[c].special}))

    @property
    def ccpa_sensitive(self) -> bool:
        return any(CATEGORIES[c].ccpa_sensitive for c in self.categories)

    @property
    def health(self) -> bool:
        return any(CATEGORIES[c].health for c in self.categories)

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "categories": list(self.categories),
            "evidence": list(self.evidence),
            "direct_identifier": self.direct_identifier,
            "safe_harbor": list(self.safe_harbor),
            "special_category": list(self.special),
            "ccpa_sensitive": self.ccpa_sensitive,
            "health": self.health,
        }


@dataclasses.dataclass(frozen=True)
class DataScan:
    """All findings for one schema (+ sample)."""

    columns: tuple[str, ...]
    findings: tuple[ColumnFinding, ...]

    def with_category(self, *names: str) -> list[ColumnFinding]:
        return [f for f in self.findings if set(f.categories) & set(names)]

    @property
    def personal(self) -> list[ColumnFinding]:
        return list(self.findings)

    @property
    def direct_identifiers(self) -> list[ColumnFinding]:
        return [f for f in self.findings if f.direct_identifier]

    @property
    def special(self) -> list[ColumnFinding]:
        return [f for f in self.findings if f.special]

    @property
    def ccpa_sensitive(self) -> list[ColumnFinding]:
        return [f for f in self.findings if f.ccpa_sensitive]

    @property
    def health(self) -> list[ColumnFinding]:
        return [f for f in self.findings if f.health]

    @property
    def safe_harbor(self) -> dict[str, list[str]]:
        """Safe Harbor letter -> columns carrying that identifier."""
        out: dict[str, list[str]] = {}
        for f in self.findings:
            for letter in f.safe_harbor:
                out.setdefault(letter, []).append(f.column)
        return dict(sorted(out.items()))

    @property
    def phi(self) -> bool:
        """Health information together with at least one Safe Harbor identifier."""
        return bool(self.health) and bool(self.safe_harbor)

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "findings": [f.to_dict() for f in self.findings],
            "safe_harbor": self.safe_harbor,
            "phi": self.phi,
        }


def normalise_name(name: str) -> str:
    """``PatientDOB`` / ``patient-dob`` / ``Patient DOB`` -> ``patient_dob``."""
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name))
    s = re.sub(r"[^0-9A-Za-z]+", "_", s).strip("_")
    return s.lower()


def classify_name(name: str) -> list[str]:
    """Categories a column name suggests (may be several, e.g. ``patient_name``)."""
    n = normalise_name(name)
    return [cat for cat, rx in _NAME_RES if rx.search(n)]


def classify_values(values: Iterable[Any], min_match_fraction: float = 0.8) -> list[tuple[str, int, int]]:
    """Value patterns that at least ``min_match_fraction`` of the non-empty values match.

    Returns ``(category, matched, total)`` per matching pattern.
    """
    vals = [str(v).strip() for v in values if v is not None and str(v).strip() != ""]
    if not vals:
        return []
    out = []
    for cat, rx in _VALUE_PATTERNS:
        matched = sum(1 for v in vals if rx.fullmatch(v) and _confirmed(cat, v))
        if matched and matched / len(vals) >= min_match_fraction:
            out.append((cat, matched, len(vals)))
    # A 17-character all-digit string is not a VIN; VINs mix letters and digits.
    if any(c == "vehicle_id" for c, _, _ in out) and all(v.isdigit() for v in vals):
        out = [o for o in out if o[0] != "vehicle_id"]
    return out


def scan(
    schema: Sequence[Any] | Mapping[str, Any],
    sample: Mapping[str, Sequence[Any]] | None = None,
    *,
    min_match_fraction: float = 0.8,
) -> DataScan:
    """Scan a schema (and optional sample values per column) for personal data.

    Args:
        schema: column names, or a list of ``{"name": .., "type": .., "description": ..}``, or
            ``{"columns": [...]}``. A column's ``pii`` / ``category`` key, if given, is taken as declared.
        sample: ``column -> values`` to check value patterns on.
    """
    columns = parse_schema(schema)
    findings = []
    sample = sample or {}
    for col in columns:
        name = col["name"]
        cats: list[str] = []
        evidence: list[str] = []
        for cat in classify_name(name):
            cats.append(cat)
            evidence.append(f"name {name!r} suggests {CATEGORIES[cat].description}")
        declared = col.get("category") or col.get("pii")
        if declared:
            for cat in [declared] if isinstance(declared, str) else declared:
                if cat not in CATEGORIES:
                    raise InvalidInput(f"column {name!r}: unknown category {cat!r}; known: {sorted(CATEGORIES)}")
                if cat not in cats:
                    cats.append(cat)
                    evidence.append(f"schema declares {name!r} as {CATEGORIES[cat].description}")
        by_value: list[tuple[str, str]] = []
        if name in sample:
            by_value = [
                (cat, f"{m}/{t} sample values of {name!r} look like {CATEGORIES[cat].description}")
                for cat, m, t in classify_values(sample[name], min_match_fraction)
            ]
        elif col.get("detected"):  # value scan recorded when the model card was loaded
            by_value = [
                (cat, f"sample values of {name!r} looked like {CATEGORIES[cat].description} when the card was loaded")
                for cat in col["detected"]
                if cat in CATEGORIES
            ]
        for cat, why in by_value:
            # A bare 5-digit number is a ZIP code only if nothing says it is something else.
            if cat == "zip" and cats and "zip" not in cats:
                continue
            if cat not in cats:
                cats.append(cat)
            evidence.append(why)
        # Plain numbers match no value pattern, so ages are checked here rather than per value finding; a
        # column whose values were scanned when the card was loaded has no sample to look at.
        if "age" in cats and name in sample:
            over = [v for v in sample[name] if _is_number(v) and float(v) > 89]
            if over:
                evidence.append(f"{len(over)} sample ages over 89 (Safe Harbor requires aggregating them as 90+)")
        if cats:
            # date_of_birth already implies the generic date identifier.
            if "date_of_birth" in cats and "date" in cats:
                cats.remove("date")
            if "ip_address" in cats and "address" in cats:  # "ip_address" is not a street address
                cats.remove("address")
            findings.append(ColumnFinding(name, tuple(cats), tuple(evidence)))
    return DataScan(tuple(c["name"] for c in columns), tuple(findings))


def parse_schema(schema) -> list[dict[str, Any]]:
    """Normalise the accepted schema shapes to a list of column dicts with a ``name``."""
    if isinstance(schema, Mapping):
        if "columns" in schema:
            schema = schema["columns"]
        elif "fields" in schema:
            schema = schema["fields"]
        else:
            schema = [{"name": k, "type": v} for k, v in schema.items()]
    if hasattr(schema, "names") and hasattr(schema, "field"):  # pyarrow.Schema
        schema = [{"name": f.name, "type": str(f.type)} for f in schema]
    if isinstance(schema, (str, bytes)) or not isinstance(schema, Iterable):
        raise InvalidInput(f"schema must be a list of columns or {{'columns': [...]}}; got {schema!r}")
    cols = []
    for i, col in enumerate(schema):
        if isinstance(col, str):
            col = {"name": col}
        if not isinstance(col, Mapping) or not col.get("name"):
            raise InvalidInput(f"schema column {i} must be a name or a table with 'name'; got {col!r}")
        cols.append(dict(col))
    names = [c["name"] for c in cols]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InvalidInput(f"schema has duplicate columns: {dupes}")
    return cols


def load_sample(path) -> dict[str, list[Any]]:
    """Read sample rows from CSV, JSON lines or Parquet into ``column -> values`` (strings as read)."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise InvalidInput(f"sample file {p} does not exist")
    try:
        return _read_sample(p)
    except InvalidInput:  # already says what is wrong (and is itself a ValueError)
        raise
    except (UnicodeDecodeError, ValueError) as exc:  # not UTF-8 text, or not Parquet (ArrowInvalid)
        raise InvalidInput(f"sample file {p}: {exc}") from None


def _read_sample(p) -> dict[str, list[Any]]:
    suffix = p.suffix.lower()
    if suffix == ".csv":
        import csv

        with open(p, newline="") as fh:
            rows = list(csv.DictReader(fh))
        cols: dict[str, list[Any]] = {}
        for row in rows:
            for k, v in row.items():
                cols.setdefault(k, []).append(v)
        return cols
    if suffix in (".jsonl", ".ndjson"):
        import json

        cols = {}
        with open(p) as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InvalidInput(f"{p} line {lineno}: {exc}") from exc
                if not isinstance(row, dict):
                    raise InvalidInput(f"{p} line {lineno}: a row must be a JSON object, got {type(row).__name__}")
                for k, v in row.items():
                    cols.setdefault(k, []).append(v)
        return cols
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pydict()
    raise InvalidInput(f"sample file {p}: unsupported type {suffix!r} (use .csv, .jsonl or .parquet)")


def _confirmed(cat: str, value: str) -> bool:
    """Checks a pattern match cannot express."""
    if cat == "account_number":
        return _luhn(value)
    if cat == "phone" and value.startswith("+"):
        return 8 <= sum(c.isdigit() for c in value) <= 15  # E.164
    if cat == "ip_address" and ":" in value:
        # IPv6 has eight groups (seven colons) or "::"; without this, times like 12:30:45 were IP addresses.
        return "::" in value or value.count(":") == 7
    return True


def _luhn(value: str) -> bool:
    digits = [int(c) for c in value if c.isdigit()]
    if len(digits) < 13:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False
