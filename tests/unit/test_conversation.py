"""Follow-up questions made standalone: when a question leans on the history, what the
deterministic rewrite adds, and how an LLM's rewrite is asked for and read."""

from __future__ import annotations

import pytest

from serve_app.conversation import (
    MAX_ADDED_WORDS,
    FollowUpRewriter,
    Turn,
    answer_names,
    condense_messages,
    content_words,
    needs_history,
    parse_condensed,
)

WATT = [
    Turn("user", "Who developed an improved version of Newcomen's engine with a separate condenser between 1763 and 1775?"),
    Turn("assistant", "Between 1763 and 1775 the Scottish engineer James Watt developed an improved version of Newcomen's engine [1]."),
]


@pytest.mark.parametrize(
    "question",
    [
        "When did he patent an engine producing continuous rotary motion?",  # a pronoun
        "What about the second one?",
        "And in 2015?",  # a continuation
        "How many people were killed?",  # too few words of its own
        "Which journal did their paper appear in?",
    ],
)
def test_questions_that_lean_on_the_history(question: str) -> None:
    assert needs_history(question)


@pytest.mark.parametrize(
    "question",
    [
        "What is the estimated population of the Warsaw metropolitan area?",
        "Which Spanish architect designed the Scottish Parliament Building in Edinburgh?",
        "How are travel expenses reimbursed by the finance department?",
    ],
)
def test_questions_that_stand_alone(question: str) -> None:
    assert not needs_history(question)


def test_a_follow_up_gets_the_previous_question_and_the_names_its_answer_gave() -> None:
    rewritten = FollowUpRewriter().rewrite(WATT, "When did he patent an engine producing continuous rotary motion?")
    question, added = rewritten.split(" (", 1)
    assert question == "When did he patent an engine producing continuous rotary motion?"  # the user's words, unchanged
    assert added.endswith(")")
    words = added[:-1].split()
    assert {"Newcomen's", "condenser", "1763", "James", "Watt"} <= set(words)
    assert "engine" not in words  # already in the follow-up


def test_a_third_turn_inherits_the_topic_of_the_first() -> None:
    history = [*WATT, Turn("user", "When did he patent an engine producing continuous rotary motion?"), Turn("assistant", "In 1781 [2].")]
    rewritten = FollowUpRewriter().rewrite(history, "And in what year did he adopt the centrifugal governor?")
    added = rewritten.split(" (", 1)[1]
    assert "rotary" in added and "Newcomen's" in added  # the last question first, then what it inherited
    assert added.index("rotary") < added.index("Newcomen's")
    assert len(added.rstrip(")").split()) <= MAX_ADDED_WORDS


def test_a_standalone_question_or_an_empty_history_is_left_alone() -> None:
    rewriter = FollowUpRewriter()
    assert rewriter.rewrite(WATT, "What is the estimated population of the Warsaw metropolitan area?") == (
        "What is the estimated population of the Warsaw metropolitan area?"
    )
    assert rewriter.rewrite([], "What year was that?") == "What year was that?"
    assert rewriter.rewrite([Turn("assistant", "Hello, ask me anything.")], "What year was that?") == "What year was that?"


def test_content_words_and_answer_names() -> None:
    assert content_words("What is the rule for them, according to the 2021 policy [2]?") == ["rule", "2021", "policy"]
    assert answer_names("The company was founded by Ada Lovelace in London [1]. It grew fast.") == ["Ada", "Lovelace", "London"]


def test_the_llm_is_asked_for_the_question_only_and_its_reply_is_checked() -> None:
    messages = condense_messages(WATT, "When did he patent it?")
    assert messages[0]["role"] == "system" and "question only" in messages[0]["content"]
    assert "[1]" not in messages[1]["content"] and "Last question: When did he patent it?" in messages[1]["content"]
    assert parse_condensed("Standalone question: When did James Watt patent it?\n", "When did he patent it?", 4000) == (
        "When did James Watt patent it?"
    )
    assert parse_condensed("  \n", "When did he patent it?", 4000) is None
    assert parse_condensed("x" * 5000 + "?", "When did he patent it?", 4000) is None
    # What SmolLM2-135M replied in the benchmark: answers, loops and other questions are refused.
    assert parse_condensed("The answer to this question is: 1978", "What year did it come out?", 4000) is None
    assert parse_condensed("The answer to this question is: " * 20, "What year did it come out?", 4000) is None
    assert parse_condensed("Which treaty did Bill Clinton sign in 1978?", "And which treaty set the duchy up?", 4000) is None
    assert parse_condensed("Which treaty set up the duchy of Normandy?", "And which treaty set it up?", 4000) == (
        "Which treaty set up the duchy of Normandy?"
    )
