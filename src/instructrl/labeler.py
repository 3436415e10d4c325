"""The simulated labeler: a deterministic stand-in for InstructGPT's human labelers.

InstructGPT trains its reward model on human rankings of model outputs and evaluates the final policy with human
preference ratings. On a laptop-sized reproduction there are no humans, so, following the "gold reward" setup of
Gao et al. (2022, *Scaling Laws for Reward Model Overoptimization*), a fixed programmatic scorer plays the labeler:
it ranks the responses used to train the reward model, and it scores the policies at the end. Because the reward
model only ever sees the labeler's *rankings*, the gap between reward-model score and labeler score measures
over-optimisation exactly as in Gao et al.

The labeler follows InstructGPT's rating criteria (Ouyang et al. 2022, Table 3): does the response attempt the
intended task, does it satisfy the explicit constraints written in the instruction, is it appropriate for a customer
assistant. (Whether it makes things up cannot be checked by a program and is not scored.) It scores a
`(prompt, response)` pair on nine criteria, each a small pure function returning a value in `[0, 1]`. Five are
*explicit constraints*: they score 1 unless the prompt states that kind of constraint, and only constraints the
prompt states take part in its score. Quoted words use double quotes (`"` or `“ ”`).

- **length** (`length_score`): does the response follow the prompt's length instruction? Recognised phrasings
  (case-insensitive, anywhere in the prompt; numbers as digits or words up to "fifty"):

    - "about / around / roughly / approximately N words": relative deviation within 10% scores 1, then the
      score decays smoothly, `1 / (1 + ((|n - N| / N - 0.1) / 0.3) ** 2)`;
    - "at most / no more than / not more than / under / fewer than / less than N words": up to the limit
      (exclusive for "under", "fewer", "less") scores 1, beyond it decays with `(n - limit) / limit` at scale 0.2;
      a response under a quarter of the limit is mildly penalised so that one word does not win;
    - "in / using / use / with one / a single / two / ... sentence(s)": `1 / (1 + 2 * d ** 2)` with `d` the
      difference in sentence count.

  With no length instruction the labeler mildly prefers 10-60 words (scale 0.5 relative to the nearest bound);
  this default always applies, so `length` is the one constraint criterion present in every score.
- **format** (`format_score`): "N bullet points" (lines starting `-`, `*`, `•` or `1.`), "a numbered list of N
  items" / "N numbered points" (lines starting `1.` or `1)`), "N paragraphs" (blocks separated by a blank line):
  `1 / (1 + 2 * d ** 2)` on the count, times the fraction of non-empty lines that are list items for the lists.
- **keywords** (`keywords_score`): "include / use / mention (the word) "X"" scores `0.1 + 0.9 *` the fraction of
  the asked words present (whole words, light stemming); "do not use / avoid / without (using) / never mention
  (the word) "X"" scores 0.1 when the word occurs. Both multiply.
- **start_end** (`start_end_score`): "begin / start (your answer) with (the word) "X"" -- the response's first
  words are X; "end / finish (your answer) with (the phrase) "X"" -- its last words are X; "end with a question"
  -- its last sentence ends with `?`. Each broken one scores 0.1; they multiply.
- **style** (`style_score`): "in (all) lowercase" / "no capital letters": `1 / (1 + n)` for `n` capital letters;
  "no / without (any) commas": `1 / (1 + n)` for `n` commas (each floored at 0.1; they multiply).
- **on_topic** (`on_topic_score`, "attempts the intended task"): fraction of the prompt's topic words (its content
  words minus stopwords, task words and the explicit constraints) that occur in the response, after a light suffix
  stemmer. A prompt without topic words scores 1.
- **ends_cleanly** (`ends_cleanly_score`): the text ends with terminal punctuation (`.`, `!`, `?`, optionally
  followed by a closing quote or bracket). A response cut off mid-word or mid-sentence scores 0.2, one ending on a
  comma, colon or similar scores 0; unbalanced brackets or quotes cost 0.3.
- **no_repetition** (`no_repetition_score`): the fraction of distinct word 3-grams times the fraction of distinct
  sentences, so both looping phrases and copied sentences are penalised.
- **no_artifacts** (`no_artifacts_score`, "appropriate for a customer assistant"): no chat-template leftovers
  (`<|im_start|>`, `<|endoftext|>`, `assistant:`) and no assistant filler ("As an AI", "Sure!", "Here is",
  "I hope this helps", ...); `max(0, 1 - 0.35 * hits)`.

Small instruct models do not follow these instructions reliably, which leaves the reward model something to learn;
`SimulatedLabeler.deciding_criterion` names the criterion that decides a comparison, so a data set can show that no
single kind of constraint decides most of its pairs.

The overall score is the weighted geometric mean of the criteria that apply to the prompt (each floored at 0.01), so
a response must do well on every criterion: a fluent, well-sized answer about the wrong thing scores low. An empty
or whitespace-only response scores exactly 0.

Example:

```python
>>> from instructrl.labeler import get_labeler
>>> labeler = get_labeler("simulated")
>>> prompt = "Describe the moon in one sentence."
>>> good = "The moon is the rocky natural satellite that orbits the Earth about once a month."
>>> bad = "Sure! Here is a description of the moon: the moon is"
>>> labeler.score(prompt, good) > labeler.score(prompt, bad)
True
```
"""

import math
import re
from collections.abc import Callable
from typing import ClassVar, Protocol, runtime_checkable

from .errors import ConfigError


@runtime_checkable
class Labeler(Protocol):
    """Anything that scores a response to a prompt; higher is better."""

    name: str

    def score(self, prompt: str, response: str) -> float: ...


# Numbers spelled out as instructions write them; `scripts/make_default_data.py` spells numbers with this table too.
NUMBER_NAMES = {
    1: "one",
    2: "two",
    3: "three",
    4: "four",
    5: "five",
    6: "six",
    7: "seven",
    8: "eight",
    9: "nine",
    10: "ten",
    11: "eleven",
    12: "twelve",
    13: "thirteen",
    14: "fourteen",
    15: "fifteen",
    16: "sixteen",
    17: "seventeen",
    18: "eighteen",
    19: "nineteen",
    20: "twenty",
    25: "twenty-five",
    30: "thirty",
    40: "forty",
    50: "fifty",
}
_NUMBER_WORDS = {"a single": 1, "a": 1, "single": 1, **{word: n for n, word in NUMBER_NAMES.items()}}
# Longest alternatives first so that "twenty-five" is not read as "twenty".
_NUM = "(" + "|".join(sorted((re.escape(w) for w in _NUMBER_WORDS), key=len, reverse=True)) + r"|\d{1,3})"

_ABOUT_WORDS_RE = re.compile(rf"\b(?:about|around|roughly|approximately)\s+{_NUM}\s+words?\b", re.IGNORECASE)
_MAX_WORDS_RE = re.compile(
    rf"\b(at\s+most|no\s+more\s+than|not\s+more\s+than|under|fewer\s+than|less\s+than)\s+{_NUM}\s+words?\b",
    re.IGNORECASE,
)
_SENTENCES_RE = re.compile(rf"\b(?:in|using|use|with)\s+{_NUM}\s+sentences?\b", re.IGNORECASE)
_BULLETS_RE = re.compile(rf"\b{_NUM}\s+bullet(?:\s*points?|s)?\b", re.IGNORECASE)
_NUMBERED_RE = re.compile(
    rf"\bnumbered\s+list\s+of\s+{_NUM}\b(?:\s+(?:items|points|steps))?|\b{_NUM}\s+numbered\s+(?:items|points|steps)\b",
    re.IGNORECASE,
)
_PARAGRAPHS_RE = re.compile(rf"\b{_NUM}\s+(?:short\s+)?paragraphs?\b", re.IGNORECASE)

# A quoted word or phrase, the way instructions name the words they ask for ("magma", “magma”).
_QUOTED = r"[\"“”]([^\"“”\n]{1,40})[\"“”]"
_REPLY = r"(?:(?:your|the)\s+(?:answer|reply|response|text)\s+|it\s+)?"
_AVOID_RE = re.compile(
    r"\b(?:do\s+not|don't|never|without|avoid)\s+(?:using\s+|use\s+|mentioning\s+|mention\s+|saying\s+|say\s+"
    rf"|writing\s+|write\s+)?(?:the\s+(?:words?|term|phrase)\s+)?{_QUOTED}",
    re.IGNORECASE,
)
_INCLUDE_RE = re.compile(
    rf"\b(?:include|including|use|using|mention|mentioning|contain|containing)\s+(?:the\s+(?:words?|term|phrase)\s+)?"
    rf"{_QUOTED}",
    re.IGNORECASE,
)
_START_RE = re.compile(
    rf"\b(?:begin|start|open)\s+{_REPLY}with\s+(?:the\s+(?:words?|phrase)\s+)?{_QUOTED}", re.IGNORECASE
)
_END_RE = re.compile(
    rf"\b(?:end|finish|close)\s+{_REPLY}with\s+(?:the\s+(?:words?|phrase|sentence)\s+)?{_QUOTED}", re.IGNORECASE
)
_END_QUESTION_RE = re.compile(rf"\b(?:end|finish|close)\s+{_REPLY}with\s+a\s+question\b", re.IGNORECASE)
_LOWERCASE_RE = re.compile(
    r"\b(?:all\s+)?lower[\s-]?case(?:\s+letters)?\b|\b(?:no|without(?:\s+any)?)\s+capital\s+letters\b", re.IGNORECASE
)
_NO_COMMAS_RE = re.compile(
    r"\b(?:no|without(?:\s+using)?(?:\s+any)?|(?:do\s+not|don't|never)\s+use(?:\s+any)?|avoid(?:\s+using)?(?:\s+any)?)"
    r"\s+commas?\b",
    re.IGNORECASE,
)
# Every explicit-constraint phrasing, so that the words inside constraints are not taken for the prompt's topic.
_CONSTRAINT_RES = (
    _ABOUT_WORDS_RE,
    _MAX_WORDS_RE,
    _SENTENCES_RE,
    _BULLETS_RE,
    _NUMBERED_RE,
    _PARAGRAPHS_RE,
    _AVOID_RE,
    _INCLUDE_RE,
    _START_RE,
    _END_RE,
    _END_QUESTION_RE,
    _LOWERCASE_RE,
    _NO_COMMAS_RE,
)

_WORD_RE = re.compile(r"[A-Za-z0-9]+(?:['’\-][A-Za-z0-9]+)*")
_BULLET_LINE_RE = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)])\s+")
_NUMBERED_LINE_RE = re.compile(r"^\s*\d{1,2}[.)]\s+")
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+|\n+")
_CLEAN_END_RE = re.compile(r"[.!?][\"'”’)\]]*$")

STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing down during each even ever every few for from further had has
    have having he her here hers herself him himself his how i if in into is it its itself just let like make many
    me more most much must my myself no nor not now of off often on once only or other our ours ourselves out over
    own per please same she should so some such than that the their theirs them themselves then there these they
    this those through to too under until up upon us very was we were what when where which while who whom whose
    why will with within without would you your yours yourself yourselves""".split()
)
# Words that say what to do rather than what to talk about, so they are not topic words.
_TASK_WORDS = frozenset(
    """answer answering beginner brief briefly bullet child describe description detail explain explanation fact
    give important know learn list matter mention newcomer overview please point reply respond response sentence
    share short simple simply someone summarise summarize summary tell teach term use useful using word work worth
    write begin start end finish keep letter lowercase capital comma paragraph numbered item include avoid question
    phrase help understand""".split()
)
_ARTIFACT_PATTERNS = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        r"<\|[^|>]*\|>",
        r"</?s>",
        r"\b(?:user|assistant|system)\s*:",
        r"\bas an ai\b",
        r"\blanguage model\b",
        r"\bi(?:'m| am) (?:sorry|happy to|glad to)\b",
        r"\bi cannot\b|\bi can't\b",
        r"^\s*(?:sure|certainly|of course|absolutely|okay|great question)\b",
        r"\bhere(?:'s| is| are)\b",
        r"\bi hope this helps\b",
        r"\blet me know\b",
        r"\bfeel free\b",
    )
)


def _parse_number(text: str) -> int:
    text = re.sub(r"\s+", " ", text.strip().lower())
    return int(text) if text.isdigit() else _NUMBER_WORDS[text]


def words(text: str) -> list[str]:
    """Word tokens of `text` (letters and digits, keeping inner apostrophes and hyphens), bullet markers excluded."""
    return _WORD_RE.findall(_strip_bullets(text))


def _strip_bullets(text: str) -> str:
    return "\n".join(_BULLET_LINE_RE.sub("", line) for line in text.splitlines())


def sentences(text: str) -> list[str]:
    """Split `text` into sentences at terminal punctuation followed by whitespace, and at line breaks."""
    return [s.strip() for s in _SENTENCE_SPLIT_RE.split(_strip_bullets(text).strip()) if _WORD_RE.search(s)]


def bullet_lines(text: str, marker: re.Pattern = _BULLET_LINE_RE) -> tuple[int, int]:
    """Returns `(number of lines starting with a list marker, number of non-empty lines)` of `text`."""
    lines = [line for line in text.splitlines() if line.strip()]
    return sum(1 for line in lines if marker.match(line)), len(lines)


def _band_decay(value: float, scale: float) -> float:
    """1 at `value <= 0`, then a smooth Cauchy-shaped decay with half-score at `value == scale`."""
    return 1.0 / (1.0 + (max(0.0, value) / scale) ** 2)


def _count_decay(diff: int) -> float:
    return 1.0 / (1.0 + 2.0 * diff**2)


def length_score(prompt: str, response: str) -> float:
    """How well `response` follows the length instruction in `prompt` (see the module docstring), in `[0, 1]`."""
    if not response.strip():
        return 0.0
    if _BULLETS_RE.search(prompt) or _NUMBERED_RE.search(prompt) or _PARAGRAPHS_RE.search(prompt):
        return 1.0  # the list or paragraph count is the length instruction: `format_score` scores it
    if m := _SENTENCES_RE.search(prompt):
        return _count_decay(len(sentences(response)) - _parse_number(m.group(1)))
    n_words = len(words(response))
    if m := _ABOUT_WORDS_RE.search(prompt):
        target = _parse_number(m.group(1))
        return _band_decay(abs(n_words - target) / target - 0.1, 0.3)
    if m := _MAX_WORDS_RE.search(prompt):
        kind = m.group(1).split()[0].lower()
        limit = _parse_number(m.group(2))
        if kind in ("under", "fewer", "less"):
            limit -= 1
        limit = max(limit, 1)
        too_short = _band_decay((limit / 4 - n_words) / limit, 0.25) if n_words < limit / 4 else 1.0
        return _band_decay((n_words - limit) / limit, 0.2) * too_short
    if n_words < 10:
        return _band_decay((10 - n_words) / 10, 0.5)
    return _band_decay((n_words - 60) / 60, 0.5)


def length_instruction(prompt: str) -> str:
    """The length instruction `length_score` reads in `prompt`: "about N words", "at most N words", "N sentences",
    "a list or paragraphs" (their count is `format_score`'s; length scores 1) or "none" (the default 10-60 words)."""
    if _BULLETS_RE.search(prompt) or _NUMBERED_RE.search(prompt) or _PARAGRAPHS_RE.search(prompt):
        return "a list or paragraphs"
    if _SENTENCES_RE.search(prompt):
        return "N sentences"
    if _ABOUT_WORDS_RE.search(prompt):
        return "about N words"
    return "at most N words" if _MAX_WORDS_RE.search(prompt) else "none"


def paragraphs(text: str) -> list[str]:
    """Blocks of `text` separated by at least one blank line, those holding words only."""
    return [block for block in re.split(r"\n\s*\n", text.strip()) if _WORD_RE.search(block)]


def format_score(prompt: str, response: str) -> float:
    """How well `response` follows the prompt's list or paragraph instruction, in `[0, 1]`; 1 without one."""
    if not response.strip():
        return 0.0
    numbered = _NUMBERED_RE.search(prompt)
    if m := numbered or _BULLETS_RE.search(prompt):
        target = _parse_number(m.group(1) or m.group(2))
        n_items, n_lines = bullet_lines(response, _NUMBERED_LINE_RE if numbered else _BULLET_LINE_RE)
        return _count_decay(n_items - target) * (n_items / n_lines if n_lines else 0.0)
    if m := _PARAGRAPHS_RE.search(prompt):
        return _count_decay(len(paragraphs(response)) - _parse_number(m.group(1)))
    return 1.0


def _phrase_words(text: str) -> list[str]:
    return [w.lower().replace("’", "'") for w in words(text)]


def asked_words(prompt: str) -> tuple[list[str], list[str]]:
    """The quoted words the prompt asks to include and those it asks to avoid: `(include, avoid)`."""
    avoid = [m.group(1).strip() for m in _AVOID_RE.finditer(prompt)]
    include = [m.group(1).strip() for m in _INCLUDE_RE.finditer(_AVOID_RE.sub(" ", prompt))]
    return include, avoid


def _contains(response_stems: list[str], phrase: str) -> int:
    """Occurrences of `phrase` (as stemmed whole words) in the stemmed word list of a response."""
    target = [_stem(w) for w in words(phrase)]
    if not target:
        return 0
    n = len(target)
    return sum(1 for i in range(len(response_stems) - n + 1) if response_stems[i : i + n] == target)


def keywords_score(prompt: str, response: str) -> float:
    """Words the prompt asks to include are present and words it asks to avoid are absent, in `[0, 1]`."""
    if not response.strip():
        return 0.0
    include, avoid = asked_words(prompt)
    stems = [_stem(w) for w in words(response)]
    score = 1.0
    if include:
        score *= 0.1 + 0.9 * sum(1 for w in include if _contains(stems, w)) / len(include)
    if any(_contains(stems, w) for w in avoid):
        score *= 0.1
    return score


def start_end_score(prompt: str, response: str) -> float:
    """The response begins and ends as the prompt asks, in `[0, 1]`; 1 without such an instruction."""
    if not response.strip():
        return 0.0
    response_words = _phrase_words(response)
    score = 1.0
    if m := _START_RE.search(prompt):
        start = _phrase_words(m.group(1))
        score *= 1.0 if start and response_words[: len(start)] == start else 0.1
    if m := _END_RE.search(prompt):
        end = _phrase_words(m.group(1))
        score *= 1.0 if end and response_words[-len(end) :] == end else 0.1
    if _END_QUESTION_RE.search(prompt):
        score *= 1.0 if response.strip().rstrip("\"'”’)]").endswith("?") else 0.1
    return score


def style_score(prompt: str, response: str) -> float:
    """Letter case and punctuation as the prompt asks (all lowercase, no commas), in `[0, 1]`; 1 without."""
    if not response.strip():
        return 0.0
    score = 1.0
    if _LOWERCASE_RE.search(prompt):
        score *= max(0.1, 1.0 / (1 + sum(1 for c in response if c.isupper())))
    if _NO_COMMAS_RE.search(prompt):
        score *= max(0.1, 1.0 / (1 + response.count(",")))
    return score


# Which explicit constraints a prompt states, by criterion: a criterion whose test is absent scores 1 and is left
# out of that prompt's score. `length` always applies (its default preference).
_STATED: dict[str, tuple[re.Pattern, ...]] = {
    "format": (_BULLETS_RE, _NUMBERED_RE, _PARAGRAPHS_RE),
    "keywords": (_INCLUDE_RE, _AVOID_RE),
    "start_end": (_START_RE, _END_RE, _END_QUESTION_RE),
    "style": (_LOWERCASE_RE, _NO_COMMAS_RE),
}
INSTRUCTION_KINDS = {
    "words": (_ABOUT_WORDS_RE, _MAX_WORDS_RE),
    "sentences": (_SENTENCES_RE,),
    "bullets": (_BULLETS_RE,),
    "numbered": (_NUMBERED_RE,),
    "paragraphs": (_PARAGRAPHS_RE,),
    "avoid": (_AVOID_RE,),
    "start": (_START_RE,),
    "end": (_END_RE, _END_QUESTION_RE),
    "lowercase": (_LOWERCASE_RE,),
    "no_commas": (_NO_COMMAS_RE,),
}


def instruction_kinds(prompt: str) -> list[str]:
    """The kinds of explicit constraint `prompt` states (`INSTRUCTION_KINDS` keys, plus "include"), or `["none"]`."""
    kinds = [k for k, patterns in INSTRUCTION_KINDS.items() if any(p.search(prompt) for p in patterns)]
    if asked_words(prompt)[0]:
        kinds.insert(kinds.index("avoid") if "avoid" in kinds else len(kinds), "include")
    return kinds or ["none"]


# The instructions that state a count, in the order `length_score` and `format_score` read them: the pattern, what
# it counts in a response, and the step its restated numbers are rounded up to ("at most 35 words", not 33).
_COUNT_INSTRUCTIONS: tuple[tuple[re.Pattern, Callable[[str], int], int], ...] = (
    (_BULLETS_RE, lambda text: bullet_lines(text)[0], 1),
    (_NUMBERED_RE, lambda text: bullet_lines(text, _NUMBERED_LINE_RE)[0], 1),
    (_PARAGRAPHS_RE, lambda text: len(paragraphs(text)), 1),
    (_SENTENCES_RE, lambda text: len(sentences(text)), 1),
    (_ABOUT_WORDS_RE, lambda text: len(words(text)), 1),
    (_MAX_WORDS_RE, lambda text: len(words(text)), 5),
)
_COUNTED_NOUN_RE = re.compile(
    r"\b(bullet\s*point|bullet|sentence|paragraph|word|point|step|item)(s?)\b", re.IGNORECASE
)


def _count_match(prompt: str) -> tuple[re.Match, int, Callable[[str], int], int] | None:
    for pattern, count, step in _COUNT_INSTRUCTIONS:
        if m := pattern.search(prompt):
            group = next(g for g in range(1, (m.lastindex or 0) + 1) if m.group(g) and _is_number(m.group(g)))
            return m, group, count, step
    return None


def _is_number(text: str) -> bool:
    text = re.sub(r"\s+", " ", text.strip().lower())
    return text.isdigit() or text in _NUMBER_WORDS


def count_targets(prompt: str, responses: list[str]) -> list[int]:
    """The numbers that `prompt`'s count instruction (N sentences, about / at most N words, N bullet points, N
    numbered items, N paragraphs) would state for each of `responses` to meet it exactly: each response's count, at
    least 1, a word limit rounded up to a multiple of 5 (one word more first where the limit excludes itself, "under
    N words"). `[]` without a count instruction."""
    if (found := _count_match(prompt)) is None:
        return []
    m, _, count, step = found
    extra = int(m.re is _MAX_WORDS_RE and m.group(1).split()[0].lower() in ("under", "fewer", "less"))
    return [max(step, -(-(count(r) + extra) // step) * step) for r in responses]


def restate_count(prompt: str, number: int) -> str | None:
    """`prompt` with the number of its count instruction replaced by `number` (in words where the prompt spelled it
    and `NUMBER_NAMES` has one, else digits; the counted noun made singular or plural to match), everything else
    unchanged. `None` without a count instruction."""
    if (found := _count_match(prompt)) is None or not 1 <= number <= 999:
        return None
    m, group, _, _ = found
    spelled = not m.group(group).strip().isdigit()
    text = NUMBER_NAMES[number] if spelled and number in NUMBER_NAMES else str(number)
    start, end = m.start(group) - m.start(), m.end(group) - m.start()
    phrase = m.group(0)
    tail = _COUNTED_NOUN_RE.sub(lambda n: n.group(1) + ("" if number == 1 else "s"), phrase[end:], count=1)
    return prompt[: m.start()] + phrase[:start] + text + tail + prompt[m.end() :]


def stated_criteria(prompt: str) -> set[str]:
    """The constraint criteria (`format`, `keywords`, ...) that `prompt` states."""
    return {name for name, patterns in _STATED.items() if any(p.search(prompt) for p in patterns)}


def _stem(word: str) -> str:
    word = word.lower().replace("’", "'")
    if word.endswith("'s"):
        word = word[:-2]
    for suffix, repl in (("ies", "y"), ("sses", "ss"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: len(word) - len(suffix)] + repl
    return word


def _strip_instructions(prompt: str) -> str:
    for pattern in _CONSTRAINT_RES:
        prompt = pattern.sub(" ", prompt)
    return prompt


def topic_words(prompt: str) -> list[str]:
    """Stemmed content words of `prompt` without stopwords, task words and explicit constraints, in order."""
    seen: dict[str, None] = {}
    for word in words(_strip_instructions(prompt)):
        lower, stem = word.lower(), _stem(word)
        if lower in STOPWORDS or lower in _NUMBER_WORDS or lower.isdigit() or len(lower) < 2:
            continue
        if lower in _TASK_WORDS or stem in _TASK_WORDS:
            continue
        seen.setdefault(stem, None)
    return list(seen)


def on_topic_score(prompt: str, response: str) -> float:
    """Fraction of the prompt's topic words that the response mentions, in `[0, 1]`."""
    if not response.strip():
        return 0.0
    topics = topic_words(prompt)
    if not topics:
        return 1.0
    response_stems = {_stem(w) for w in words(response)}
    # Hyphenated topic words ("self-driving") also count when the response writes the parts separately.
    response_stems |= {_stem(part) for w in words(response) for part in w.split("-")}
    return sum(1 for t in topics if t in response_stems) / len(topics)


def ends_cleanly_score(prompt: str, response: str) -> float:
    """1 if `response` ends with a finished sentence and balanced brackets, lower for a cut-off ending."""
    text = response.strip()
    if not text:
        return 0.0
    if _CLEAN_END_RE.search(text):
        score = 1.0
    elif text[-1].isalnum():
        score = 0.2
    else:
        score = 0.0
    balanced = text.count("(") == text.count(")") and text.count('"') % 2 == 0 and text.count("“") == text.count("”")
    return max(0.0, score - (0.0 if balanced else 0.3))


def no_repetition_score(prompt: str, response: str) -> float:
    """Fraction of distinct word 3-grams times fraction of distinct sentences, in `[0, 1]`."""
    tokens = [w.lower() for w in words(response)]
    if not tokens:
        return 0.0
    trigrams = [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]
    distinct_3 = len(set(trigrams)) / len(trigrams) if trigrams else 1.0
    sents = [" ".join(w.lower() for w in words(s)) for s in sentences(response)]
    distinct_sents = len(set(sents)) / len(sents) if sents else 1.0
    return distinct_3 * distinct_sents


def no_artifacts_score(prompt: str, response: str) -> float:
    """1 minus 0.35 per chat artifact or filler phrase found in `response`, floored at 0."""
    if not response.strip():
        return 0.0
    hits = sum(len(p.findall(response)) for p in _ARTIFACT_PATTERNS)
    return max(0.0, 1.0 - 0.35 * hits)


class SimulatedLabeler:
    """Deterministic programmatic labeler: the "gold reward" of the project.

    The score is the weighted geometric mean of the criteria described in the module docstring that apply to the
    prompt (`length`, `on_topic`, `ends_cleanly`, `no_repetition`, `no_artifacts` always; `format`, `keywords`,
    `start_end`, `style` when the prompt states them), each floored at `floor` so that one failed criterion lowers
    but does not erase the signal from the others.

    Args:
        weights (`dict[str, float]`, *optional*, defaults to `SimulatedLabeler.DEFAULT_WEIGHTS`):
            Weight of each criterion; keys must be a subset of `CRITERIA`; the weights of the criteria that apply
            to a prompt are normalised to sum to 1. By default every explicit constraint weighs 0.35, `on_topic`
            0.25, `ends_cleanly` and `no_repetition` 0.15, `no_artifacts` 0.10: following what the instruction
            explicitly asks is the skill a small instruct model lacks most.
        floor (`float`, *optional*, defaults to `0.01`):
            Lower bound applied to each criterion before the geometric mean.
    """

    name: ClassVar[str] = "simulated"
    CRITERIA: ClassVar[dict[str, Callable[[str, str], float]]] = {
        "length": length_score,
        "format": format_score,
        "keywords": keywords_score,
        "start_end": start_end_score,
        "style": style_score,
        "on_topic": on_topic_score,
        "ends_cleanly": ends_cleanly_score,
        "no_repetition": no_repetition_score,
        "no_artifacts": no_artifacts_score,
    }
    DEFAULT_WEIGHTS: ClassVar[dict[str, float]] = {
        "length": 0.35,
        "format": 0.35,
        "keywords": 0.35,
        "start_end": 0.35,
        "style": 0.35,
        "on_topic": 0.25,
        "ends_cleanly": 0.15,
        "no_repetition": 0.15,
        "no_artifacts": 0.10,
    }

    def __init__(self, weights: dict[str, float] | None = None, floor: float = 0.01) -> None:
        weights = dict(self.DEFAULT_WEIGHTS if weights is None else weights)
        unknown = sorted(set(weights) - set(self.CRITERIA))
        if unknown:
            raise ConfigError(f"Unknown labeler criteria {unknown}; valid criteria are {sorted(self.CRITERIA)}.")
        total = sum(weights.values())
        if total <= 0 or any(w < 0 for w in weights.values()):
            raise ConfigError(f"Labeler weights must be non-negative with a positive sum, got {weights}.")
        if not 0.0 < floor <= 1.0:
            raise ConfigError(f"Labeler floor must be in (0, 1], got {floor}.")
        self.weights = {k: w / total for k, w in weights.items()}
        self.floor = floor

    def prompt_weights(self, prompt: str) -> dict[str, float]:
        """Weights of the criteria that apply to `prompt`, normalised to sum to 1 (all zero if none applies)."""
        stated = stated_criteria(prompt)
        applying = {k: w for k, w in self.weights.items() if k not in _STATED or k in stated}
        total = sum(applying.values())
        return {k: (w / total if total > 0 else 0.0) for k, w in applying.items()}

    def criteria(self, prompt: str, response: str) -> dict[str, float]:
        """Score of each criterion that applies to `prompt`, in `[0, 1]`, keyed by criterion name."""
        return {name: float(self.CRITERIA[name](prompt, response)) for name in self.prompt_weights(prompt)}

    def _log_terms(self, prompt: str, response: str) -> dict[str, float]:
        crit = self.criteria(prompt, response)
        return {name: w * math.log(max(self.floor, crit[name])) for name, w in self.prompt_weights(prompt).items()}

    def score(self, prompt: str, response: str) -> float:
        """Overall score in `[0, 1]`; 0 for an empty response."""
        if not response.strip():
            return 0.0
        return min(1.0, max(0.0, math.exp(sum(self._log_terms(prompt, response).values()))))

    def rank(self, prompt: str, responses: list[str]) -> list[int]:
        """Indices of `responses`, best first; equal scores keep their original order."""
        scores = [self.score(prompt, r) for r in responses]
        return sorted(range(len(responses)), key=lambda i: (-scores[i], i))

    length_instruction = staticmethod(length_instruction)

    def deciding_criterion(self, prompt: str, better: str, worse: str) -> str | None:
        """The criterion that contributes most to `better` outscoring `worse` under `prompt`; None for a tie.

        A pair's score gap is a sum of one term per criterion (weighted log-score differences); the deciding
        criterion is the one with the largest term in the winner's favour.
        """
        if not better.strip() or not worse.strip():
            return "empty" if better.strip() != worse.strip() else None
        a, b = self._log_terms(prompt, better), self._log_terms(prompt, worse)
        gaps = {name: a[name] - b[name] for name in a}
        if sum(gaps.values()) <= 0:
            return None
        return max(gaps, key=lambda name: (gaps[name], name))


def decided_by(labeler: SimulatedLabeler, rankings: list[dict]) -> dict[str, float]:
    """Share of the (non-tied) comparison pairs of `rankings` that each criterion decides, largest first.

    `rankings` are rows as `instructrl.comparisons` writes them (`prompt` text, `responses`, `scores`).
    """
    counts: dict[str, int] = {}
    for row in rankings:
        prompt, responses, scores = row["prompt"], row["responses"], row["scores"]
        for i in range(len(responses)):
            for j in range(len(responses)):
                if scores[i] > scores[j]:
                    name = labeler.deciding_criterion(prompt, responses[i], responses[j])
                    if name is not None:
                        counts[name] = counts.get(name, 0) + 1
    total = sum(counts.values())
    return {k: v / total for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))} if total else {}


LABELERS: dict[str, type] = {"simulated": SimulatedLabeler}


def get_labeler(name: str) -> Labeler:
    """Builds the labeler registered under `name` in `LABELERS`.

    Args:
        name (`str`):
            Registry key, e.g. `"simulated"`.

    Raises:
        `ConfigError`: if `name` is not registered.
    """
    if name not in LABELERS:
        raise ConfigError(
            f"Unknown labeler {name!r}: set `labeler` to one of {sorted(LABELERS)}, or register yours in "
            "`instructrl.labeler.LABELERS`."
        )
    return LABELERS[name]()
