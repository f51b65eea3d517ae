"""PII redaction before anything is embedded or stored, with Microsoft Presidio's analyzer and
anonymizer. Presidio's pattern recognizers (with their checksums: Luhn for cards, IBAN check
digits, SSN validity rules) need no model; person names need a spaCy NER model, which cannot be
downloaded here, so PERSON is detected only when `ingest.pii.spacy_model` names an installed one.

Modes: `redact` replaces each finding with <ENTITY_TYPE>; `mask` keeps its last four characters
(`************1111`); `off` keeps the text.

Presidio's default number recognizers rewrote table figures, dates and section numbers in real
documents (651 "phone numbers" in the 118 PDFs of ../shared/data/pdfs, 23 of them real; IRS section
numbers as IP addresses). The numeric
types therefore use stricter subclasses of Presidio's recognizers; each finding gets one of two
scores:

- unambiguous (0.7, or 1.0 when a checksum validates it): a format that is hardly ever anything else (`+44 20 7946 0958`,
  `(212) 555-0187`, `4111 1111 1111 1111` with a Luhn check, `536-22-8171`, `192.168.10.24`);
- ambiguous (`WEAK_SCORE` 0.1): kept only when Presidio's context enhancer finds a context word
  among the five words before it (`phone`, `fax`, `card`, `ssn`, `ip`, ...), which lifts it to
  0.45, above the default threshold 0.4.

Any number that continues a run of numbers (a table row: `26,347  14,581  11,766`, a cell glued to
its neighbour, a longer dotted section number `2.3.59.1.5`) and anything shaped like a date is
never a finding, whatever its context. `benchmarks/pii_corpus_scan.py` measures this on the real
PDFs and `benchmarks/pii_eval.py` on the labelled set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from importlib import metadata
from typing import Any, ClassVar

from rag_core.settings import PIISettings

log = logging.getLogger("ingest_jobs.redaction")

NER_ENTITIES = {"PERSON", "LOCATION", "ORGANIZATION", "NRP"}

# Bump when what the recognizers find changes (patterns, scores, context words, guards): it is part
# of `signature`, so files redacted by an older revision are parsed again.
RECOGNIZERS_REVISION = 2

STRONG_SCORE = 0.7
WEAK_SCORE = 0.1
# Presidio's LemmaContextAwareEnhancer: a context word adds 0.35 (WEAK_SCORE -> 0.45).
CONTEXT_FACTOR = 0.35
CONTEXT_MIN_SCORE = 0.4
CONTEXT_WORDS_BEFORE = 5

# Context words are compared whole (lower-cased tokens), so inflections are listed.
PHONE_CONTEXT = [
    "phone",
    "phones",
    "telephone",
    "telephones",
    "tel",
    "tel.",
    "telefon",
    "téléphone",
    "cell",
    "cellphone",
    "mobile",
    "fax",
    "facsimile",
    "call",
    "calls",
    "calling",
    "dial",
    "text",
    "sms",
    "whatsapp",
    "hotline",
    "helpline",
    "ph",
    "ph.",
    "mob",
    "mob.",
]
CARD_CONTEXT = [
    "card",
    "cards",
    "credit",
    "debit",
    "visa",
    "mastercard",
    "amex",
    "discover",
    "jcb",
    "diners",
    "maestro",
    "cc",
    "pan",
]
SSN_CONTEXT = ["ssn", "ssns", "social", "security", "ss#", "ssn#"]
IP_CONTEXT = [
    "ip",
    "ips",
    "ipv4",
    "ipv6",
    "host",
    "hosts",
    "hostname",
    "server",
    "servers",
    "gateway",
    "router",
    "dns",
    "subnet",
    "netmask",
    "firewall",
    "proxy",
    "vpn",
    "ping",
    "traffic",
    "login",
    "logon",
    "resolver",
    "listens",
    "listening",
]
IBAN_CONTEXT = ["iban", "bank", "account", "transfer", "wire"]
CONTEXT_VOCABULARY = frozenset(PHONE_CONTEXT + CARD_CONTEXT + SSN_CONTEXT + IP_CONTEXT + IBAN_CONTEXT)

_DASHES = "\\-\u2010\u2011\u2012\u2013\u2014\u2212"  # for character classes: hyphen, dashes, minus
# A table cell holding a number: 26,347  2864.94  –0.5  *–0.7  (12)  $1,200  54%  1.24E-05
_NUMBER_CELL = re.compile(rf"[*†‡]?[+({_DASHES}]?[$€£]?\d[\d,.]*(?:[Ee][{_DASHES}+]?\d+)?\)?%?[*†‡]?")
_DATE = re.compile(  # 12-12-2022, (07-02-2001), 4/2/20, 2024-03-15
    rf"\(?(?:[0-3]?\d([{_DASHES}/.])[0-3]?\d\1(?:\d{{2}}|\d{{4}})|\d{{4}}([{_DASHES}/.])[01]?\d\2[0-3]?\d)\)?"
)


def in_number_run(text: str, start: int, end: int) -> bool:
    """True when text[start:end] is part of a run of numbers (a table row, a longer number or
    dotted section number) rather than a value standing on its own."""
    before, after = text[max(0, start - 80) : start], text[end : end + 80]
    # Glued to a neighbouring number: "11,<match>", "2.3.<match>", "68/<match>", "<match>.5",
    # "<match>,581", "<match>-2011".
    if re.search(rf"\d[,./{_DASHES}]?$", before) or re.match(rf"[,./{_DASHES}]?\d", after):
        return True
    # Separated by spaces or tabs from a number cell that is itself next to another number cell or
    # at the start or end of its line: "2864.94 <match>", "<match> -13.4⏎". A number followed by
    # words ("(212) 555-0187 24 hours a day") is prose.
    line_before, line_after = before.rsplit("\n", 1)[-1], after.split("\n", 1)[0]
    cells_before = line_before.split() if line_before[-1:].isspace() else []
    cells_after = line_after.split() if line_after[:1].isspace() else []
    for cells in (cells_before[::-1], cells_after):
        if cells and _is_number_cell(cells[0]) and (len(cells) == 1 or _is_number_cell(cells[1])):
            return True
    return False


def _is_number_cell(token: str) -> bool:
    return bool(_NUMBER_CELL.fullmatch(token.rstrip(";:")))


def _looks_like_date(value: str) -> bool:
    return bool(_DATE.fullmatch(value.strip()))


def _rescore(results: list, text: str, strength) -> list:
    """Presidio results with the run guard applied and each score set to STRONG or WEAK (or the
    result dropped) by `strength(value) -> float | None`."""
    kept = []
    for result in results:
        value = text[result.start : result.end]
        if in_number_run(text, result.start, result.end) or _looks_like_date(value):
            continue
        score = strength(value)
        if score is None:
            continue
        result.score = score
        if result.analysis_explanation is not None:
            result.analysis_explanation.set_improved_score(score)
        kept.append(result)
    return kept


def _recognizers() -> list:
    from presidio_analyzer import Pattern
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    class StrictPhoneRecognizer(PhoneRecognizer):
        """Presidio's phonenumbers-based recognizer; unambiguous only in international form
        (`+CC ...`) or as a North American `(NNN) NNN-NNNN` / `1-NNN-NNN-NNNN`, else it needs
        context."""

        NANP = re.compile(rf"(?:\(\d{{3}}\)\s?|1[{_DASHES} .]\d{{3}}[{_DASHES} .])\d{{3}}[{_DASHES} .]\d{{4}}")

        def analyze(self, text, entities, nlp_artifacts=None):
            return _rescore(super().analyze(text, entities, nlp_artifacts), text, self.strength)

        def strength(self, value: str) -> float | None:
            if sum(c.isdigit() for c in value) < 7:
                return None
            if "\n" in value:
                return None
            if value.startswith("+") or self.NANP.match(value):
                return STRONG_SCORE
            # Ambiguous numbers spanning table cells: a spaced dash ("0 - 2 11 54") or a decimal
            # among space-separated groups ("55.71 54.29 58.33").
            groups = value.split()
            if any(g in ("-", "\u2013", "\u2014") for g in groups):
                return None
            if len(groups) > 1 and any("." in g or "," in g for g in groups):
                return None
            # A row of small cells ("7 1940 1 436 6", "20 20-40 1231"): a one-digit group after the
            # first, or spaces mixed with other separators.
            digit_groups = re.findall(r"\d+", value)
            if any(len(g) == 1 for g in digit_groups[1:]):
                return None
            if len(groups) > 1 and re.search(rf"\d[{_DASHES}./]\d", value):
                return None
            return WEAK_SCORE

    class StrictCreditCardRecognizer(CreditCardRecognizer):
        """Luhn-valid numbers starting like a payment card (2-6); grouped 4-4-4-4(-n) or 4-6-5 with
        one separator is unambiguous, a bare 13-19 digit run needs context."""

        PATTERNS: ClassVar[list] = [
            Pattern("card 4-4-4-4", r"\b[2-6]\d{3}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?\b", 0.3),
            Pattern("card 4-6-5", r"\b3[47]\d{2}([ -])\d{6}\1\d{5}\b", 0.3),
            Pattern("card digits", r"\b[2-6]\d{12,18}\b", 0.3),
        ]

        def __init__(self):
            super().__init__(patterns=self.PATTERNS, context=CARD_CONTEXT)

        def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
            results = super().analyze(text, entities, nlp_artifacts, regex_flags)
            # Not the tail of a longer grouped code: "DE89 3704 0044 0532 0130 01" (an IBAN).
            results = [r for r in results if not self.continues_a_code(text[max(0, r.start - 6) : r.start])]
            return _rescore(results, text, self.strength)

        @staticmethod
        def continues_a_code(before: str) -> bool:
            group = re.search(r"(?<!\S)([A-Za-z0-9]{2,4})[ -]$", before)
            return bool(group and any(c.isdigit() for c in group.group(1)))

        @staticmethod
        def strength(value: str) -> float | None:
            return WEAK_SCORE if value.isdigit() else 1.0

    class StrictSsnRecognizer(UsSsnRecognizer):
        """`NNN-NN-NNNN` (a valid area, group and serial) is unambiguous; spaced, dotted or bare
        nine digits need context."""

        PATTERNS: ClassVar[list] = [
            Pattern("SSN hyphenated", r"\b\d{3}-\d{2}-\d{4}\b", 0.5),
            Pattern("SSN spaced or dotted", r"\b\d{3}([ .])\d{2}\1\d{4}\b", 0.05),
            Pattern("SSN digits", r"\b\d{9}\b", 0.05),
        ]

        def __init__(self):
            super().__init__(patterns=self.PATTERNS, context=SSN_CONTEXT)

        def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
            return _rescore(super().analyze(text, entities, nlp_artifacts, regex_flags), text, self.strength)

        def invalidate_result(self, pattern_text: str) -> bool:
            return super().invalidate_result(pattern_text) or pattern_text[0] == "9"  # 9xx: ITINs, never SSNs

        @staticmethod
        def strength(value: str) -> float | None:
            return STRONG_SCORE if re.fullmatch(r"\d{3}-\d{2}-\d{4}", value) else WEAK_SCORE

    class StrictIpRecognizer(IpRecognizer):
        """Presidio's IPv4/IPv6 patterns and `ipaddress` check. A dotted quad is unambiguous only
        with an octet of three digits (192.168.1.5, not the section number 4.10.12.3) or a CIDR
        prefix; IPv6 needs three groups. The rest needs context."""

        def __init__(self):
            super().__init__(context=IP_CONTEXT)

        def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
            results = super().analyze(text, entities, nlp_artifacts, regex_flags)
            # A dotted quad followed by more dots ("2.3.59.1.5") or a word character is no address.
            results = [r for r in results if not re.match(r"\.\d|\w", text[r.end : r.end + 2])]
            return _rescore(results, text, self.strength)

        @staticmethod
        def strength(value: str) -> float | None:
            if ":" in value and "." not in value:  # IPv6
                groups = [g for g in value.split("/")[0].split(":") if g]
                return STRONG_SCORE if len(groups) >= 3 else WEAK_SCORE
            address = value.split("/")[0].split(":")[-1]
            octets = address.split(".")
            if len(octets) != 4:
                return None
            if "/" in value or any(len(o) == 3 for o in octets):
                return STRONG_SCORE
            return WEAK_SCORE

    class StrictIbanRecognizer(IbanRecognizer):
        """Presidio's IBAN recognizer (country format and check digits), outside number runs."""

        def __init__(self):
            super().__init__(context=IBAN_CONTEXT)

        def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
            return _rescore(super().analyze(text, entities, nlp_artifacts, regex_flags), text, lambda value: 1.0)

    return [
        StrictPhoneRecognizer(context=PHONE_CONTEXT),
        StrictCreditCardRecognizer(),
        StrictSsnRecognizer(),
        StrictIpRecognizer(),
        StrictIbanRecognizer(),
    ]


REPLACED = ("PhoneRecognizer", "CreditCardRecognizer", "UsSsnRecognizer", "IpRecognizer", "IbanRecognizer")


def _offline_public_suffixes() -> None:
    # Presidio's e-mail check uses tldextract, which would try to download the public suffix list
    # on first use; the list bundled with tldextract is enough and works offline.
    import tldextract
    import tldextract.tldextract as implementation

    implementation.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "missing"


def redactor_signature(mode: str, entities: Iterable[str], score_threshold: float, spacy_model: str | None) -> str:
    """What decides the redacted text besides the input: 'pii/2 redact 1a2b3c4d5e6f' ('pii off'
    when nothing is redacted). Cheap (builds nothing); stored per file so a change re-parses."""
    if mode == "off":
        return "pii off"
    identity = {
        "mode": mode,
        "entities": sorted(set(entities)),
        "score_threshold": round(float(score_threshold), 6),
        "spacy_model": spacy_model or None,
        "recognizers_revision": RECOGNIZERS_REVISION,
        "presidio_analyzer": _version("presidio-analyzer"),
        "phonenumbers": _version("phonenumbers"),
        "spacy_model_version": _version(spacy_model) if spacy_model else None,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return f"pii/{RECOGNIZERS_REVISION} {mode} {digest}"


def non_overlapping(results: list) -> list:
    """Presidio results without overlaps (the higher score, then the longer span wins), in text order."""
    kept: list = []
    for result in sorted(results, key=lambda r: (-r.score, r.start - r.end, r.start)):
        if all(result.end <= other.start or other.end <= result.start for other in kept):
            kept.append(result)
    return sorted(kept, key=lambda r: r.start)


class PIIRedactor:
    def __init__(
        self,
        mode: str = "redact",
        entities: Iterable[str] = (),
        score_threshold: float = PIISettings().score_threshold,
        spacy_model: str | None = None,
    ):
        self.mode = mode
        self.score_threshold = score_threshold
        self.spacy_model = spacy_model
        self.analyzer: Any = None
        self.requested: list[str] = list(dict.fromkeys(entities))
        self.entities: list[str] = []
        self.unsupported: list[str] = []
        self.signature = redactor_signature(mode, self.requested, score_threshold, spacy_model)
        if mode == "off":
            return
        _import_presidio(spacy_model)
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
        from presidio_anonymizer import AnonymizerEngine

        _offline_public_suffixes()
        nlp_engine = _nlp_engine(spacy_model)
        registry = RecognizerRegistry(supported_languages=["en"])
        registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp_engine)
        for name in REPLACED:
            registry.remove_recognizer(name)
        for recognizer in _recognizers():
            registry.add_recognizer(recognizer)
        enhancer = LemmaContextAwareEnhancer(
            context_similarity_factor=CONTEXT_FACTOR,
            min_score_with_context_similarity=CONTEXT_MIN_SCORE,
            context_prefix_count=CONTEXT_WORDS_BEFORE,
            context_suffix_count=0,
            context_matching_mode="whole_word",
        )
        self.analyzer = AnalyzerEngine(
            registry=registry, nlp_engine=nlp_engine, supported_languages=["en"], context_aware_enhancer=enhancer
        )
        self.anonymizer = AnonymizerEngine()
        supported = set(self.analyzer.get_supported_entities("en"))
        if spacy_model is None:
            supported -= NER_ENTITIES  # a blank pipeline has no named-entity recogniser
        self.entities = [e for e in self.requested if e in supported]
        self.unsupported = [e for e in self.requested if e not in supported]
        if self.unsupported:
            log.warning(
                "PII types not detectable here (a spaCy NER model is needed: ingest.pii.spacy_model)",
                extra={"fields": {"entities": self.unsupported}},
            )

    def findings(self, text: str) -> list:
        """What `redact` replaces: Presidio results at or above the threshold, without overlaps
        (the higher score, then the longer span wins), in text order."""
        if self.analyzer is None or not text.strip():
            return []
        return non_overlapping(
            self.analyzer.analyze(text=text, language="en", entities=self.entities, score_threshold=self.score_threshold)
        )

    def redact(self, text: str) -> tuple[str, Counter]:
        """The text with PII replaced, and how many of each type were found."""
        findings = self.findings(text)
        if not findings:
            return text, Counter()
        from presidio_anonymizer.entities import OperatorConfig

        if self.mode == "mask":
            operators = {"DEFAULT": OperatorConfig("custom", {"lambda": _keep_last_four})}
        else:
            operators = {"DEFAULT": OperatorConfig("replace")}  # <ENTITY_TYPE>
        result = self.anonymizer.anonymize(text=text, analyzer_results=findings, operators=operators)
        return result.text, Counter(item.entity_type for item in result.items)


def _keep_last_four(value: str) -> str:
    return "*" * max(0, len(value) - 4) + value[-4:]


_LEMMA_COMPONENT = "pii_lowercase_lemmas"


def _nlp_engine(spacy_model: str | None) -> Any:
    import spacy
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from spacy.language import Language

    if not Language.has_factory(_LEMMA_COMPONENT):

        def lowercase_lemmas(doc):
            # A blank pipeline has no lemmatizer; Presidio's context words are compared with lemmas.
            for token in doc:
                token.lemma_ = token.lower_
            return doc

        Language.component(_LEMMA_COMPONENT, func=lowercase_lemmas)

    class ContextSpacyEngine(SpacyNlpEngine):
        """A blank English pipeline (tokens, lower-cased lemmas) unless a model is named; context
        words such as 'call' are never treated as stop words (spaCy lists 'call' as one)."""

        def load(self) -> None:
            if spacy_model:
                self.nlp = {"en": spacy.load(spacy_model)}
            else:
                nlp = spacy.blank("en")
                nlp.add_pipe(_LEMMA_COMPONENT)
                self.nlp = {"en": nlp}

        def is_stopword(self, word: str, language: str) -> bool:
            return word.lower() not in CONTEXT_VOCABULARY and super().is_stopword(word, language)

    engine = ContextSpacyEngine(models=[{"lang_code": "en", "model_name": spacy_model or "blank"}])
    engine.load()
    return engine


# presidio_analyzer's import pulls these in for NER engines this redactor never builds without a
# transformer spaCy model: spaCy's thinc probes torch, and presidio's Hugging Face token pipe imports
# transformers' pipelines. That took 7-11 s in each fresh parse worker of every ingest job (rules
# and a blank spaCy pipeline, the default, need neither); without them the redactor builds in ~1.6 s.
_ML_FRAMEWORKS = ("torch", "transformers")


def _import_presidio(spacy_model: str | None) -> None:
    """presidio_analyzer imported once per process, without torch and transformers unless a spaCy
    model is configured (a transformer pipeline such as en_core_web_trf needs both) or they are
    loaded already (then they cost nothing)."""
    if "presidio_analyzer" in sys.modules or spacy_model:
        return
    # A None entry in sys.modules makes `import torch` raise ImportError, which thinc and presidio
    # handle as "not installed"; the entries are removed right after, so later imports work. Only
    # thinc keeps believing torch absent in this process, which a blank pipeline never asks about.
    # Parse workers build redactors on their task thread, where nothing else imports meanwhile.
    blocked = [name for name in _ML_FRAMEWORKS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import presidio_analyzer  # noqa: F401
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


@lru_cache(maxsize=4)
def shared_redactor(mode: str, entities: tuple[str, ...], score_threshold: float, spacy_model: str | None) -> PIIRedactor:
    """One redactor per worker process and configuration (building Presidio takes about a second)."""
    return PIIRedactor(mode, entities, score_threshold, spacy_model)
