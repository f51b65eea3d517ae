"""Follow-up questions made standalone from the conversation before retrieval.

"What about the second one?" retrieves nothing useful on its own: the subject is in the history.
`FollowUpRewriter` is the deterministic rewrite used without an LLM (and when the LLM fails): a
follow-up that leans on the history (a pronoun, an ellipsis, too few content words of its own)
gets the content words of the previous question, itself made standalone the same way, and the
names in the previous answer; a question that stands on its own is left as it is, so a change of
topic is not dragged back to the old one. With an LLM, `condense_messages` is the prompt that asks
it for the standalone question (serve_app.generation).

Measured on 78 follow-ups over the shared PDFs and SQuAD: README, Chat completions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

ROLE_USER, ROLE_ASSISTANT = "user", "assistant"

_WORD = re.compile(r"[\w][\w'\-.]*[\w]|[\w]", re.UNICODE)
_CITATION = re.compile(r"\[\d{1,2}\]")
# Words that point back into the conversation: a question holding one is not standalone.
_ANAPHORA = frozenset(
    "it its itself they them their theirs themselves he him his himself she her hers herself this that these those "
    "there then one ones former latter same such other another second first third last previous above "
    "aforementioned said".split()
)
# Openings that continue the previous question rather than start a new one.
_CONTINUATIONS = ("and ", "and,", "what about", "how about", "but ", "also ", "so ", "or ", "then ", "same ", "what else", "why not")
_STOPWORDS = frozenset(
    "a an and are as at be been being but by can could did do does doing done for from had has have having how i if in "
    "into is it its of on or our shall should so than that the their them then there these they this to was we were "
    "what when where which who whom whose why will with would you your about after before between during per much many "
    "any all each more most other some such only own same too very also just not no nor yet ever still again further "
    "once here both either neither according one ones me my mine us he him his she her hers it's who's what's there's "
    "tell give show find list name describe explain please know say said says get got make made".split()
)
MAX_ADDED_WORDS = 16
MAX_ANSWER_NAMES = 4
STANDALONE_MIN_CONTENT_WORDS = 4


REWRITE_AS_IS, REWRITE_RULES, REWRITE_LLM = "as-is", "rules", "llm"


@dataclass(frozen=True)
class Standalone:
    """The question retrieval gets, and how it was made from the follow-up."""

    question: str
    how: str  # as-is (it stood alone), rules (FollowUpRewriter) or llm


@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"; other roles are not conversation turns
    content: str


def content_words(text: str) -> list[str]:
    """The text's words that carry its topic, in order, without repeats (case-insensitive)."""
    seen: set[str] = set()
    words = []
    for word in _WORD.findall(_CITATION.sub(" ", text)):
        key = word.lower().strip(".'-")
        if not key or key in _STOPWORDS or key in _ANAPHORA or key in seen:
            continue
        seen.add(key)
        words.append(word.rstrip("."))
    return words


def needs_history(question: str) -> bool:
    """Whether the question leans on earlier turns: it points back (a pronoun, 'the second one'),
    continues ('And in 2015?', 'What about ...'), or has too few words of its own to stand alone."""
    lowered = " ".join(question.lower().split())
    if lowered.startswith(_CONTINUATIONS):
        return True
    if any(word in _ANAPHORA for word in re.findall(r"[a-z']+", lowered)):
        return True
    return len(content_words(question)) < STANDALONE_MIN_CONTENT_WORDS


def answer_names(answer: str, limit: int = MAX_ANSWER_NAMES) -> list[str]:
    """Capitalised words inside the answer's sentences (names, places, titles), not the first word
    of a sentence, which is capitalised anyway: 'he' in a follow-up is often the answer's name."""
    names: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+", _CITATION.sub(" ", answer)):
        words = _WORD.findall(sentence)
        for word in words[1:]:
            key = word.lower()
            if word[0].isupper() and key not in _STOPWORDS and key not in _ANAPHORA and word not in names:
                names.append(word)
                if len(names) == limit:
                    return names
    return names


class FollowUpRewriter:
    """The deterministic rewrite: a follow-up plus the topic of the conversation so far."""

    def __init__(self, max_added_words: int = MAX_ADDED_WORDS, use_answer_names: bool = True):
        self.max_added_words = max_added_words
        self.use_answer_names = use_answer_names

    def rewrite(self, history: Sequence[Turn], question: str) -> str:
        """`history`: the turns before `question`, oldest first."""
        previous = self._previous_question(history)
        if previous is None or not needs_history(question):
            return question
        position, previous_question = previous
        last_answer = next((t.content for t in reversed(history) if t.role == ROLE_ASSISTANT), "")
        # Nearest first: the previous question's own words, the names its answer gave, then the
        # topic that question itself inherited; the cap cuts from the far end.
        candidates = content_words(previous_question)
        if self.use_answer_names and last_answer:
            candidates += answer_names(last_answer)
        candidates += content_words(self.rewrite(history[:position], previous_question))
        own = {w.lower() for w in content_words(question)}
        added: list[str] = []
        for word in candidates:
            if word.lower() not in own:
                own.add(word.lower())
                added.append(word)
        if not added:
            return question
        return f"{question.strip()} ({' '.join(added[: self.max_added_words])})"

    @staticmethod
    def _previous_question(history: Sequence[Turn]) -> tuple[int, str] | None:
        """Where the history's last user question is, and its text."""
        for position in range(len(history) - 1, -1, -1):
            if history[position].role == ROLE_USER:
                return position, history[position].content
        return None


CONDENSE_SYSTEM_PROMPT = (
    "Rewrite the user's last question so that it can be understood without the conversation: replace pronouns "
    "and references with what they refer to, and keep the question's meaning. If it already stands alone, repeat "
    "it unchanged. Reply with the question only, no answer and no explanation."
)


def condense_messages(history: Sequence[Turn], question: str, max_chars_per_turn: int = 600) -> list[dict[str, str]]:
    """The chat messages that ask an LLM for the standalone question."""
    lines = [f"{turn.role}: {' '.join(_CITATION.sub(' ', turn.content).split())[:max_chars_per_turn]}" for turn in history]
    user = "Conversation:\n" + "\n".join(lines) + f"\n\nLast question: {question}\n\nStandalone question:"
    return [{"role": "system", "content": CONDENSE_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_condensed(text: str, question: str, max_chars: int) -> str | None:
    """The LLM's standalone question, or None when its reply is not usable as one: empty, far
    longer than the question, not a question (an answer, a refusal, a repetition loop), or one
    that drops most of the follow-up's own words (a different question). Small models do all of
    these (README, Chat completions); the caller then rewrites deterministically."""
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"^(standalone question|rewritten question|question)\s*:\s*", "", line, flags=re.IGNORECASE).strip().strip('"').strip()
    if not line or len(line) > min(max_chars, 3 * len(question) + 200) or not line.endswith("?"):
        return None
    kept = {w.lower() for w in content_words(line)}
    own = [w.lower() for w in content_words(question)]
    if own and sum(w in kept for w in own) < (len(own) + 1) // 2:
        return None
    return line
