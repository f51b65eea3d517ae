"""PII redaction before anything is embedded or stored, with Microsoft Presidio's analyzer and
anonymizer. Presidio's pattern recognizers (with their checksums: Luhn for cards, IBAN check
digits, SSN validity rules) need no model; person names need a spaCy NER model, which cannot be
downloaded here, so PERSON is detected only when `ingest.pii.spacy_model` names an installed one.

Modes: `redact` replaces each finding with <ENTITY_TYPE>; `mask` keeps its last four characters
(`************1111`); `off` keeps the text.
"""

from __future__ import annotations

import logging
from collections import Counter
from functools import lru_cache
from typing import Any, Iterable

from rag_core.settings import PIISettings

log = logging.getLogger("ingest_jobs.redaction")

NER_ENTITIES = {"PERSON", "LOCATION", "ORGANIZATION", "NRP"}


def _offline_public_suffixes() -> None:
    # Presidio's e-mail check uses tldextract, which would try to download the public suffix list
    # on first use; the list bundled with tldextract is enough and works offline.
    import tldextract
    import tldextract.tldextract as implementation

    implementation.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


class PIIRedactor:
    def __init__(self, mode: str = "redact", entities: Iterable[str] = (), score_threshold: float = PIISettings().score_threshold,
                 spacy_model: str | None = None):
        self.mode = mode
        self.score_threshold = score_threshold
        self.analyzer: Any = None
        self.entities: list[str] = []
        self.unsupported: list[str] = []
        if mode == "off":
            return
        from presidio_analyzer import AnalyzerEngine
        from presidio_anonymizer import AnonymizerEngine

        _offline_public_suffixes()
        self.analyzer = AnalyzerEngine(nlp_engine=_nlp_engine(spacy_model), supported_languages=["en"])
        self.anonymizer = AnonymizerEngine()
        supported = set(self.analyzer.get_supported_entities("en"))
        if spacy_model is None:
            supported -= NER_ENTITIES  # a blank pipeline has no named-entity recogniser
        wanted = list(dict.fromkeys(entities))
        self.entities = [e for e in wanted if e in supported]
        self.unsupported = [e for e in wanted if e not in supported]
        if self.unsupported:
            log.warning("PII types not detectable here (a spaCy NER model is needed: ingest.pii.spacy_model)",
                        extra={"fields": {"entities": self.unsupported}})

    def redact(self, text: str) -> tuple[str, Counter]:
        """The text with PII replaced, and how many of each type were found."""
        if self.analyzer is None or not text.strip():
            return text, Counter()
        from presidio_anonymizer.entities import OperatorConfig

        findings = self.analyzer.analyze(text=text, language="en", entities=self.entities, score_threshold=self.score_threshold)
        if not findings:
            return text, Counter()
        if self.mode == "mask":
            operators = {"DEFAULT": OperatorConfig("custom", {"lambda": _keep_last_four})}
        else:
            operators = {"DEFAULT": OperatorConfig("replace")}  # <ENTITY_TYPE>
        result = self.anonymizer.anonymize(text=text, analyzer_results=findings, operators=operators)
        # Count what was actually replaced (the anonymizer merges overlapping findings).
        return result.text, Counter(item.entity_type for item in result.items)


def _keep_last_four(value: str) -> str:
    return "*" * max(0, len(value) - 4) + value[-4:]


def _nlp_engine(spacy_model: str | None) -> Any:
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    class BlankEnglish(SpacyNlpEngine):
        """Tokenisation only: pattern recognizers need no trained pipeline."""

        def load(self) -> None:
            import spacy

            self.nlp = {"en": spacy.blank("en")}

    if spacy_model:
        engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": spacy_model}])
    else:
        engine = BlankEnglish(models=[{"lang_code": "en", "model_name": "blank"}])
    engine.load()
    return engine


@lru_cache(maxsize=4)
def shared_redactor(mode: str, entities: tuple[str, ...], score_threshold: float, spacy_model: str | None) -> PIIRedactor:
    """One redactor per worker process and configuration (building Presidio takes about a second)."""
    return PIIRedactor(mode, entities, score_threshold, spacy_model)
