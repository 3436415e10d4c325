"""Generate the default data shipped in `src/instructrl/data/default/`.

Run from the repository root:

```bash
python scripts/make_default_data.py                      # writes src/instructrl/data/default/
python scripts/make_default_data.py --out /tmp/data --seed 1234
```

Everything is derived deterministically from `--seed` (default `SEED`), so two runs with the same Python version
write byte-identical files. The Python version matters only for the pretraining-mix corpus, whose text comes from
the standard library's docstrings.

Written files (JSON lines, UTF-8, one object per line):

- `sft_train.jsonl`, `sft_eval.jsonl`: demonstrations in TRL's conversational prompt/completion format,
  `{"prompt": [{"role": "user", ...}], "completion": [{"role": "assistant", ...}]}`. Each prompt combines an
  everyday topic from the topic table (`scripts/default_topics.txt`) with a task template (`TASK_TEMPLATES`) and
  usually one or two explicit constraints of the kinds the labeler checks (`make_constraints`: length, list or
  paragraph format, a word to include or avoid, how to begin or end, lowercase, no commas). The completion is
  rendered from the topic's hand-written sentences so that it obeys them (`make_demo`: one of the renderings the
  labeler scores highest); a prompt whose best demonstration scores under `MIN_DEMO_SCORE` is skipped.
- `comparison_prompts.jsonl`, `ppo_prompts.jsonl`, `eval_prompts.jsonl`: prompt-only rows `{"prompt": [...]}`
  from the same templates. No prompt text occurs in more than one file (SFT files included), and the topics of
  `eval_prompts.jsonl` (`N_HELDOUT_TOPICS` of them, drawn with the seed) never occur in any other file; eval
  prompts also draw from phrasings held out of every other file (`HELDOUT_TASK_TEMPLATES`, the second half of
  each entry of `PHRASES`).
- `ptx_train.jsonl`, `ptx_eval.jsonl`: `{"text": ...}` rows of English prose (200-1200 characters) taken from the
  docstrings of the standard-library modules in `PTX_MODULES` and from the `help()` topics in `pydoc_data.topics`,
  for the PPO-ptx pretraining mix. Whole sources (a top-level package or one help topic) are held out for the eval
  split, so no eval paragraph shares a source with a train paragraph. The whole standard library holds too little
  prose for more than a few hundred kilobytes; `PTX_TRAIN_CHARS` only caps the train split.
- `README.md`: a description of every file, its row count, source, licence and the command that regenerates it.

The topic sentences and templates were written for this project (Apache-2.0); the docstring text is from the
Python standard library (PSF License).
"""

import argparse
import hashlib
import importlib
import inspect
import itertools
import json
import random
import re
import sys
import warnings
from pathlib import Path
from pydoc_data.topics import topics

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "src") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "src"))

from instructrl.data import DEFAULT_DATA_FILES  # noqa: E402
from instructrl.labeler import NUMBER_NAMES, STOPWORDS, SimulatedLabeler, words  # noqa: E402

SEED = 1234
DEFAULT_OUT = REPO_ROOT / "src" / "instructrl" / "data" / "default"

N_SFT_TRAIN = 600
N_SFT_EVAL = 60
N_COMPARISON = 400
# More comparison prompts, drawn after every other split so that the others stay as they were: the reward model's
# held-out accuracy rose from 0.58 to 0.81 with 1200 prompts' rankings instead of 300 (docs/measurements.md, 2026-12-04
# 17:00).
N_COMPARISON_MORE = 800
N_PPO = 400
N_EVAL = 100
# The reward model's validation prompts: held-out topics and phrasings like `eval_prompts`, but none of its prompts, so
# that the RM's held-out accuracy (what RM settings are chosen by) never reads the labeler on evaluation prompts. Drawn
# after every other split, so that the others stay as they were.
N_VALIDATION = 60
N_HELDOUT_TOPICS = 12
MIN_DEMO_SCORE = 0.85
# Without a length or format instruction a demonstration is a short answer: the first sentence and at most two more
# (about 30 words), well inside the 48-64 new tokens that collection, PPO and evaluation sample.
MAX_EXTRA_SENTENCES = 2

PTX_TRAIN_CHARS = 1_500_000
PTX_EVAL_FRACTION = 0.1
PTX_MIN_CHARS = 200
PTX_MAX_CHARS = 1200

# Imperative tasks can be preceded by the size instruction ("In two sentences, describe ..."); questions cannot.
TASK_TEMPLATES = (
    "Describe {topic}",
    "Explain {topic}",
    "Tell me about {topic}",
    "Give a short description of {topic}",
    "Write a short explanation of {topic}",
    "Give an overview of {topic}",
    "Share some facts about {topic}",
    "Summarize what you know about {topic}",
    "Explain {topic} to a newcomer",
    "Describe {topic} in simple terms",
    "What should a beginner know about {topic}?",
    "What is worth knowing about {topic}?",
)
# Phrasings held out of every training split: `eval_prompts` draws from these as well as the ones above, so the
# evaluation also measures instructions worded in a way the models never saw.
HELDOUT_TASK_TEMPLATES = (
    "Help me understand {topic}",
    "Teach me about {topic}",
    "What can you tell me about {topic}?",
)


# (kind, weight): how often each kind of explicit constraint is drawn as a prompt's first one. "none" keeps some
# prompts without any, so the model also sees the labeler's default length preference. The kinds follow the
# labeler's criteria: size (length or format), words to include or avoid, how to begin or end, case or commas.
INSTRUCTION_KINDS = (
    ("about", 0.12),
    ("max", 0.09),
    ("sentences", 0.09),
    ("bullets", 0.06),
    ("numbered", 0.05),
    ("paragraphs", 0.04),
    ("include", 0.1),
    ("avoid", 0.08),
    ("start", 0.08),
    ("end", 0.09),
    ("lowercase", 0.06),
    ("no_commas", 0.05),
    ("none", 0.09),
)
# A second constraint of another group is added to this share of the prompts that have one.
SECOND_CONSTRAINT_P = 0.35
GROUPS = {
    **dict.fromkeys(("about", "max", "sentences", "bullets", "numbered", "paragraphs"), "size"),
    **dict.fromkeys(("include", "avoid"), "keywords"),
    **dict.fromkeys(("start", "end"), "start_end"),
    **dict.fromkeys(("lowercase", "no_commas"), "style"),
}
SIZE_KINDS = ("about", "max", "sentences", "bullets", "numbered", "paragraphs")
ABOUT_WORDS = (15, 20, 25, 30, 40, 50)
MAX_WORDS = (12, 15, 20, 25, 30)
SENTENCE_COUNTS = (1, 2, 3)
BULLET_COUNTS = (2, 3, 4)
PARAGRAPH_COUNTS = (2, 3)
ANSWER_LEADS = ("Answer", "Reply", "Respond", "Please answer")
START_PHRASES = ("In short", "Overall", "Simply put", "Briefly", "To begin")
END_PHRASES = ("That is the gist.", "That covers the basics.", "There is much more to learn.")
END_QUESTIONS = ("Would you like to know more?", "What would you like to know next?", "Which part interests you most?")

# Phrasings of each constraint kind: (used in training splits, held out for `eval_prompts`). Size phrasings are
# embedded in the task sentence ("Describe tea in about 20 words."); the others are sentences of their own.
PHRASES = {
    "about": (("about {n} words", "around {n} words", "roughly {n} words"), ("approximately {n} words",)),
    "max": (("at most {n} words", "no more than {n} words", "fewer than {n} words"), ("under {n} words",)),
    "sentences": (("in {n} sentence{s}", "using {n} sentence{s}"), ("with {n} sentence{s}",)),
    "bullets": (("in {n} bullet points", "as {n} bullet points"), ("using {n} bullets",)),
    "numbered": (("as a numbered list of {n} items",), ("in {n} numbered points",)),
    "paragraphs": (("in {n} paragraphs",), ("in {n} short paragraphs",)),
    "include": (('Include the word "{w}".', 'Use the word "{w}" in your answer.'), ('Make sure to mention "{w}".',)),
    "avoid": (('Do not use the word "{w}".', 'Avoid the word "{w}".'), ('Never mention "{w}".',)),
    "start": (('Begin your answer with "{w}".', 'Start your reply with the words "{w}".'), ('Open with "{w}".',)),
    "end": (
        ('End your answer with the phrase "{w}"', "End your answer with a question."),
        ('Finish your reply with the sentence "{w}"', "Finish with a question."),
    ),
    "lowercase": (("Write in all lowercase letters.", "Use lowercase only."), ("Use no capital letters.",)),
    "no_commas": (("Do not use any commas.", "Write it without commas."), ("Avoid using commas.",)),
}

# Standard-library modules whose docstrings feed the pretraining mix: pure-Python, present in every CPython build,
# importable without side effects, and not deprecated for removal, so that the list works on 3.10-3.13.
PTX_MODULES = (
    "abc argparse ast asyncio.base_events asyncio.events asyncio.futures asyncio.locks asyncio.queues "
    "asyncio.streams asyncio.tasks base64 bdb bisect calendar cmd code codecs codeop collections colorsys "
    "compileall concurrent.futures configparser contextlib copy copyreg csv dataclasses datetime decimal difflib "
    "dis doctest email.charset email.feedparser email.header email.message email.parser email.policy email.utils "
    "enum filecmp fileinput fnmatch fractions ftplib functools getopt gettext glob gzip hashlib heapq hmac "
    "html html.parser http.client http.cookiejar http.cookies http.server imaplib importlib importlib.abc "
    "importlib.metadata importlib.resources inspect io ipaddress json json.decoder json.encoder keyword linecache "
    "locale logging logging.config logging.handlers mailbox mimetypes modulefinder multiprocessing.connection "
    "multiprocessing.managers multiprocessing.pool multiprocessing.process multiprocessing.queues netrc numbers "
    "opcode operator optparse os pathlib pdb pickle pickletools pkgutil platform plistlib poplib posixpath "
    "pprint profile pstats py_compile pyclbr pydoc queue quopri random re reprlib rlcompleter runpy sched secrets "
    "selectors shelve shlex shutil site smtplib socket socketserver stat statistics string struct subprocess "
    "symtable sysconfig tabnanny tarfile tempfile textwrap threading timeit token tokenize trace traceback types "
    "typing unittest.case unittest.loader unittest.mock unittest.result unittest.runner unittest.suite "
    "urllib.parse urllib.request urllib.response uuid warnings weakref wsgiref.handlers wsgiref.headers "
    "wsgiref.simple_server wsgiref.util xml.dom.minidom xml.etree.ElementTree xml.sax.handler xml.sax.saxutils "
    "xmlrpc.client xmlrpc.server zipapp zipfile zipimport "
    # Pure-Python twins and private helpers of the modules above carry much of the stdlib's prose.
    "_pydecimal _pyio _strptime asyncio.protocols asyncio.runners asyncio.sslproto asyncio.transports builtins "
    "concurrent.futures._base email._header_value_parser email._parseaddr email._policybase email.base64mime "
    "email.generator email.headerregistry email.quoprimime graphlib itertools marshal "
    "multiprocessing.shared_memory time xml.dom.domreg xml.sax._exceptions xml.sax.xmlreader"
).split()

# Everyday topics written for this project: the name as it appears in prompts, then short factual sentences. The
# first sentence names the topic and is short, so every demonstration mentions the topic and fits tight limits.
TOPICS = (Path(__file__).resolve().parent / "default_topics.txt").read_text(encoding="utf-8")


def parse_topics(text: str = TOPICS) -> dict[str, list[str]]:
    """Parses the `TOPICS` table: blocks separated by a blank line, the topic's name first, then its sentences."""
    topics = {}
    for block in text.strip().split("\n\n"):
        name, *sentences = [line.strip() for line in block.strip().splitlines()]
        if name in topics:
            raise ValueError(f"Duplicate topic {name!r} in TOPICS.")
        topics[name] = sentences
    return topics


def _number(rng: random.Random, n: int) -> str:
    """Word counts are written as digits or words at random, so the model sees both spellings."""
    return NUMBER_NAMES[n] if n in NUMBER_NAMES and rng.random() < 0.5 else str(n)


def _content_words(sentence: str) -> list[str]:
    return [w for w in words(sentence) if len(w) >= 4 and w not in STOPWORDS and w.islower()]


def make_constraint(rng: random.Random, kind: str, topic: str, sentences: list[str], heldout: bool) -> dict:
    """Draws one constraint of `kind` for `topic`: `{"kind", "n" or "word", "phrase"}`.

    With `heldout`, the phrasing is drawn from the training and held-out phrasings alike.
    """
    train, held = PHRASES[kind]
    phrase = rng.choice(train + held if heldout else train)
    spec: dict = {"kind": kind}
    if kind in ("about", "max"):
        n = rng.choice(ABOUT_WORDS if kind == "about" else MAX_WORDS)
        # "fewer than 20 words" allows at most 19, which is what the labeler enforces.
        spec["n"] = n - 1 if phrase.startswith(("fewer", "under")) else n
        spec["phrase"] = phrase.format(n=_number(rng, n))
        if not phrase.startswith(("in ", "with ", "as ", "using ")):
            spec["phrase"] = "in " + spec["phrase"]
    elif kind in ("sentences", "bullets", "numbered", "paragraphs"):
        counts = {"sentences": SENTENCE_COUNTS, "bullets": BULLET_COUNTS, "numbered": BULLET_COUNTS}
        n = rng.choice(counts.get(kind, PARAGRAPH_COUNTS))
        count = rng.choice(["one", "a single"]) if n == 1 else NUMBER_NAMES[n]
        spec["n"], spec["phrase"] = n, phrase.format(n=count, s="s" if n > 1 else "")
    elif kind in ("include", "avoid"):
        # A word from the topic's other sentences: demonstrations can then include or leave out its sentence.
        first = {w.lower() for w in words(sentences[0])} | {w.lower() for w in words(topic)}
        pool = sorted({w for s in sentences[1:] for w in _content_words(s) if w.lower() not in first})
        spec["word"] = rng.choice(pool)
        spec["phrase"] = phrase.format(w=spec["word"])
    elif kind in ("start", "end"):
        if kind == "end":
            spec["word"] = None if "question" in phrase else rng.choice(END_PHRASES)
        else:
            spec["word"] = rng.choice(START_PHRASES)
        spec["phrase"] = phrase.format(w=spec["word"])
    else:
        spec["phrase"] = phrase
    return spec


def make_constraints(rng: random.Random, topic: str, sentences: list[str], heldout: bool) -> list[dict]:
    """Draws a prompt's explicit constraints: none, one, or two of different groups (the size one first)."""
    kind = rng.choices([k for k, _ in INSTRUCTION_KINDS], weights=[w for _, w in INSTRUCTION_KINDS])[0]
    if kind == "none":
        return []
    kinds = [kind]
    if rng.random() < SECOND_CONSTRAINT_P:
        other = [k for k, _ in INSTRUCTION_KINDS if k != "none" and GROUPS[k] != GROUPS[kind]]
        kinds.append(rng.choice(other))
    kinds.sort(key=lambda k: GROUPS[k] != "size")
    return [make_constraint(rng, k, topic, sentences, heldout) for k in kinds]


def make_prompt(rng: random.Random, topic: str, sentences: list[str], heldout: bool = False) -> tuple[str, list[dict]]:
    """Builds a user prompt for `topic`; returns it with its constraints (see `make_constraints`)."""
    templates = TASK_TEMPLATES + HELDOUT_TASK_TEMPLATES if heldout else TASK_TEMPLATES
    task = rng.choice(templates).format(topic=topic)
    constraints = make_constraints(rng, topic, sentences, heldout)
    is_question = task.endswith("?")
    size = [c for c in constraints if c["kind"] in SIZE_KINDS]
    others = " ".join(c["phrase"] for c in constraints if c["kind"] not in SIZE_KINDS)
    if not size:
        prompt = task if is_question else task + "."
    else:
        phrase = size[0]["phrase"]
        placement = "separate" if is_question else rng.choice(["after", "after", "before", "separate"])
        if placement == "after":
            prompt = f"{task} {phrase}."
        elif placement == "before":
            prompt = f"{phrase[0].upper()}{phrase[1:]}, {task[0].lower()}{task[1:]}."
        else:
            prompt = f"{task if is_question else task + '.'} {rng.choice(ANSWER_LEADS)} {phrase}."
    return (f"{prompt} {others}" if others else prompt), constraints


def _lower_first(sentence: str, sentences: list[str]) -> str:
    """Lowercases the first letter unless the first word is a name (capitalised inside another sentence)."""
    first = sentence.split()[0]
    if any(re.search(rf"(?<!^)\b{re.escape(first)}\b", s) for s in sentences):
        return sentence
    return sentence[0].lower() + sentence[1:]


def render(chosen: list[str], constraints: list[dict], all_sentences: list[str]) -> str:
    """Writes the chosen sentences as the constraints ask: opening and closing words, commas, case, format."""
    chosen = list(chosen)
    by_kind = {c["kind"]: c for c in constraints}
    if "start" in by_kind:
        chosen[0] = f"{by_kind['start']['word']}, {_lower_first(chosen[0], all_sentences)}"
    if "end" in by_kind:
        ending = by_kind["end"]["word"] or END_QUESTIONS[len(chosen[0]) % len(END_QUESTIONS)]
        chosen[-1] = f"{chosen[-1]} {ending}"
    if "no_commas" in by_kind:
        chosen = [re.sub(r",\s*", " ", s) for s in chosen]
    if "bullets" in by_kind:
        text = "\n".join(f"- {s}" for s in chosen)
    elif "numbered" in by_kind:
        text = "\n".join(f"{i}. {s}" for i, s in enumerate(chosen, 1))
    elif "paragraphs" in by_kind:
        n = by_kind["paragraphs"]["n"]
        bounds = [round(i * len(chosen) / n) for i in range(n + 1)]
        text = "\n\n".join(" ".join(chosen[bounds[i] : bounds[i + 1]]) for i in range(n))
    else:
        text = " ".join(chosen)
    return text.lower() if "lowercase" in by_kind else text


def make_demo(
    rng: random.Random, prompt: str, constraints: list[dict], sentences: list[str], labeler: SimulatedLabeler
) -> str | None:
    """The demonstration for `prompt`: of all renderings of the topic's sentences (the first, which names the
    topic, always kept; the others in their written order; at most `MAX_EXTRA_SENTENCES` more when the prompt sets
    no size), one of those the labeler scores highest, or `None` when none reaches `MIN_DEMO_SCORE`."""
    first, rest = sentences[0], sentences[1:]
    by_kind = {c["kind"]: c for c in constraints}
    sizes = [by_kind[k]["n"] for k in ("bullets", "numbered", "paragraphs", "sentences") if k in by_kind]
    sized = any(k in by_kind for k in SIZE_KINDS)
    candidates = []
    for r in range(len(rest) + 1):
        if not sized and r > MAX_EXTRA_SENTENCES:
            continue
        if sizes and not (by_kind.get("paragraphs") or by_kind.get("sentences")) and r + 1 != sizes[0]:
            continue
        for combo in itertools.combinations(rest, r):
            text = render([first, *combo], constraints, sentences)
            candidates.append((labeler.score(prompt, text), text))
    best = max(score for score, _ in candidates)
    if best < MIN_DEMO_SCORE:
        return None
    return rng.choice([text for score, text in candidates if score >= best - 0.02])


def _user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


HELDOUT_SPLITS = ("eval_prompts", "validation_prompts")  # held-out topics, and phrasings no training split uses


def make_prompt_splits(seed: int) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Builds the SFT demonstrations and the prompt-only splits; returns them and some counts for the README."""
    topics = parse_topics()
    names = sorted(topics)
    heldout = set(random.Random(f"{seed}-heldout").sample(names, N_HELDOUT_TOPICS))
    train_topics = [t for t in names if t not in heldout]
    labeler = SimulatedLabeler()
    seen: set[str] = set()
    stats = {"dropped_demos": 0, "n_topics": len(names), "n_heldout_topics": len(heldout)}

    def draw(name: str, n_rows: int, pool: list[str], with_demo: bool) -> list[dict]:
        rng = random.Random(f"{seed}-{name}")
        rows: list[dict] = []
        for _ in range(200 * n_rows):
            if len(rows) == n_rows:
                break
            topic = rng.choice(pool)
            prompt, constraints = make_prompt(rng, topic, topics[topic], heldout=name in HELDOUT_SPLITS)
            if prompt in seen:
                continue
            row = {"prompt": _user(prompt)}
            if with_demo:
                demo = make_demo(rng, prompt, constraints, topics[topic], labeler)
                if demo is None:
                    stats["dropped_demos"] += 1
                    continue
                row["completion"] = [{"role": "assistant", "content": demo}]
            seen.add(prompt)
            rows.append(row)
        if len(rows) < n_rows:
            raise RuntimeError(f"Could only build {len(rows)} of {n_rows} unique prompts for {name}.")
        return rows

    splits = {
        "sft_train": draw("sft_train", N_SFT_TRAIN, train_topics, with_demo=True),
        "sft_eval": draw("sft_eval", N_SFT_EVAL, train_topics, with_demo=True),
        "comparison_prompts": draw("comparison_prompts", N_COMPARISON, train_topics, with_demo=False),
        "ppo_prompts": draw("ppo_prompts", N_PPO, train_topics, with_demo=False),
        "eval_prompts": draw("eval_prompts", N_EVAL, sorted(heldout), with_demo=False),
    }
    splits["comparison_prompts"] += draw("comparison_prompts_more", N_COMPARISON_MORE, train_topics, with_demo=False)
    splits["validation_prompts"] = draw("validation_prompts", N_VALIDATION, sorted(heldout), with_demo=False)
    stats["heldout_topics"] = sorted(heldout)  # type: ignore[assignment]
    return splits, stats


_CODE_CHARS = set("=_[]{}<>`|\\#@$%^~*/")
_NOT_PROSE_RE = re.compile(r">>>|::|\.\.\.|https?:|\w\.\w+\(")
_SENTENCE_END_RE = re.compile(r"(?<=[a-z][.!?])\s+(?=[A-Z])")


def _is_prose(lines: list[str]) -> bool:
    """Heuristic for a paragraph of English prose rather than code, a table or a parameter list."""
    if any(line[:1].isspace() for line in lines):
        return False
    text = " ".join(line.strip() for line in lines)
    if len(text) < 40 or not text[0].isupper() or not text.endswith(".") or _NOT_PROSE_RE.search(text):
        return False
    if sum(c in _CODE_CHARS for c in text) > 0.015 * len(text):
        return False
    if sum(c.isalpha() or c == " " for c in text) < 0.9 * len(text):
        return False
    tokens = text.split()
    plain = sum(1 for t in tokens if t.strip(".,;:!?'\"()-").isalpha() and t.strip(".,;:!?'\"()-").islower())
    return len(tokens) >= 8 and plain >= 0.7 * len(tokens)


def _split_long(text: str) -> list[str]:
    """Splits a paragraph longer than `PTX_MAX_CHARS` at sentence ends into pieces that fit."""
    if len(text) <= PTX_MAX_CHARS:
        return [text]
    pieces, current = [], ""
    for sentence in _SENTENCE_END_RE.split(text):
        if current and len(current) + 1 + len(sentence) > PTX_MAX_CHARS:
            pieces.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    return [*pieces, current]


def _docstrings(module: object) -> list[str]:
    """The module's docstring, then those of its own classes, functions and methods, in sorted name order."""
    docs = [module.__doc__]
    for _, obj in sorted(vars(module).items()):
        if not (inspect.isclass(obj) or inspect.isfunction(obj)) or obj.__module__ != module.__name__:
            continue
        docs.append(obj.__doc__)
        if inspect.isclass(obj):
            for _, member in sorted(vars(obj).items()):
                member = getattr(member, "__func__", member)
                if inspect.isfunction(member) or isinstance(member, property):
                    docs.append(member.__doc__)
    return [inspect.cleandoc(d) for d in docs if isinstance(d, str)]


def prose_chunks(doc: str) -> list[str]:
    """Joins consecutive prose paragraphs of a docstring into chunks of `PTX_MIN_CHARS`-`PTX_MAX_CHARS` chars."""
    chunks, current = [], ""
    for paragraph in re.split(r"\n\s*\n", doc):
        lines = [line for line in paragraph.splitlines() if line.strip()]
        if not lines or not _is_prose(lines):
            if len(current) >= PTX_MIN_CHARS:
                chunks.append(current)
            current = ""
            continue
        for text in _split_long(" ".join(line.strip() for line in lines)):
            if current and len(current) + 1 + len(text) <= PTX_MAX_CHARS and len(current) < PTX_MIN_CHARS:
                current = f"{current} {text}"
            else:
                if len(current) >= PTX_MIN_CHARS:
                    chunks.append(current)
                current = text
    if len(current) >= PTX_MIN_CHARS:
        chunks.append(current)
    return [c for c in chunks if PTX_MIN_CHARS <= len(c) <= PTX_MAX_CHARS]


def make_ptx(seed: int) -> tuple[list[dict], list[dict], list[str]]:
    """Builds the pretraining-mix corpus; returns train rows, eval rows and the held-out top-level modules."""
    sources: list[tuple[str, str]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module_name in PTX_MODULES:
            module = importlib.import_module(module_name)
            # Submodules of one package share a group so that the eval split shares no package with train.
            sources += [(module_name.split(".")[0], doc) for doc in _docstrings(module)]
    # The help() topics are the language reference's text; each topic is its own source document.
    sources += [(f"pydoc_data.topics:{key}", inspect.cleandoc(text)) for key, text in sorted(topics.items())]

    by_module: dict[str, list[str]] = {}
    seen: set[str] = set()
    for group, doc in sources:
        for chunk in prose_chunks(doc):
            if chunk not in seen:
                seen.add(chunk)
                by_module.setdefault(group, []).append(chunk)

    rng = random.Random(f"{seed}-ptx")
    groups = sorted(by_module)
    rng.shuffle(groups)
    total = sum(len(c) for chunks in by_module.values() for c in chunks)
    eval_target = PTX_EVAL_FRACTION * min(total, PTX_TRAIN_CHARS / (1 - PTX_EVAL_FRACTION))
    eval_groups, eval_chars = [], 0
    for group in groups:
        if eval_chars >= eval_target:
            break
        eval_groups.append(group)
        eval_chars += sum(len(c) for c in by_module[group])

    def rows(group_names: list[str], max_chars: float) -> list[dict]:
        texts = [c for g in sorted(group_names) for c in by_module[g]]
        rng.shuffle(texts)
        out, chars = [], 0
        for text in texts:
            if chars + len(text) > max_chars:
                break
            out.append({"text": text})
            chars += len(text)
        return out

    train = rows([g for g in groups if g not in eval_groups], PTX_TRAIN_CHARS)
    return train, rows(eval_groups, eval_target), sorted(eval_groups)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


README_TEMPLATE = """# Default data

Shipped with `instructrl` so that every stage runs offline. Generated by `scripts/make_default_data.py` with seed
{seed} on Python {python_version} (CPython, {platform}); regenerate from the repository root with

```bash
python scripts/make_default_data.py --seed {seed} --out src/instructrl/data/default
```

The generation is deterministic: the same seed and Python minor version ({python_minor}) give byte-identical files.
Only `ptx_*.jsonl` depend on the Python version, because their text comes from the standard library.

All files are JSON lines (UTF-8, one object per line).

| file | rows | bytes | format | source | licence |
|---|---:|---:|---|---|---|
{table}

- **Demonstrations** (`sft_*`): TRL conversational prompt/completion rows. Prompts combine one of {n_topics}
  everyday topics with a task template ("Describe X", "What should a beginner know about X?", ...) and, for most
  prompts, one or two explicit constraints of the kinds `SimulatedLabeler` checks: length ("in about 20 words",
  "in at most 15 words", "in two sentences"), format ("as three bullet points", "as a numbered list of three
  items", "in two paragraphs"), words ('Include the word "magma".', 'Avoid the word "lava".'), opening and ending
  ('Begin your answer with "Overall".', "End your answer with a question."), case and punctuation ("Write in all
  lowercase letters.", "Do not use any commas."). Completions are rendered from hand-written sentences about the
  topic so that they obey the constraints; each scores at least {min_score} with `SimulatedLabeler` (mean
  {mean_score:.3f}). {dropped} candidate prompts whose demonstration fell short were skipped during generation.
- **Prompt splits** (`comparison_prompts`, `ppo_prompts`, `eval_prompts`, `validation_prompts`):
  `{{"prompt": [{{"role": "user", ...}}]}}` rows from the same templates. No prompt text occurs in two files (SFT
  files included). `eval_prompts` uses only these {n_heldout} held-out topics, which occur in no other file:
  {heldout}; its prompts also draw from task templates and constraint phrasings that no other file uses ("Help me
  understand X", 'Open with "Briefly".', "Use no capital letters.", ...). `validation_prompts` is drawn the same way
  (held-out topics and phrasings) and shares no prompt with `eval_prompts`: the reward model's held-out comparisons
  are sampled for it, so that choosing reward-model settings by their accuracy never reads the labeler on evaluation
  prompts.
- **Pretraining mix** (`ptx_*`): `{{"text": ...}}` rows of 200-1200 characters of prose from the docstrings of
  {n_modules} standard-library modules and from the `help()` topics in `pydoc_data.topics` (the language
  reference's text as shipped with Python), filtered to paragraphs that read as English prose (no code, doctests or
  parameter lists), deduplicated and shuffled. Whole sources (a top-level package, or one help topic) are held out
  for `ptx_eval`: {ptx_heldout}. The whole standard library holds only about 1.9 MB of docstring and help text,
  most of it code, signatures and parameter lists, so the prose corpus is a few hundred kilobytes.

Licences: the topic sentences and templates were written for this project and are Apache-2.0. The docstring text
is Copyright Python Software Foundation, used under the PSF License Agreement
(https://docs.python.org/3/license.html).
"""

FILE_INFO = {
    "sft_train": ("prompt/completion (conversational)", "written for this project", "Apache-2.0"),
    "sft_eval": ("prompt/completion (conversational)", "written for this project", "Apache-2.0"),
    "comparison_prompts": ("prompt (conversational)", "written for this project", "Apache-2.0"),
    "ppo_prompts": ("prompt (conversational)", "written for this project", "Apache-2.0"),
    "eval_prompts": ("prompt (conversational)", "written for this project", "Apache-2.0"),
    "validation_prompts": ("prompt (conversational)", "written for this project", "Apache-2.0"),
    "ptx_train": ("text", "Python standard-library docstrings and help topics", "PSF-2.0"),
    "ptx_eval": ("text", "Python standard-library docstrings and help topics", "PSF-2.0"),
}


assert set(FILE_INFO) == set(DEFAULT_DATA_FILES), "every shipped data file is described, and only those"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=SEED, help="Seed for every random choice.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Output folder.")
    args = parser.parse_args(argv)

    splits, stats = make_prompt_splits(args.seed)
    ptx_train, ptx_eval, ptx_heldout = make_ptx(args.seed)
    splits["ptx_train"], splits["ptx_eval"] = ptx_train, ptx_eval

    args.out.mkdir(parents=True, exist_ok=True)
    table = []
    for name, rows in splits.items():
        path = args.out / DEFAULT_DATA_FILES[name]
        write_jsonl(path, rows)
        fmt, source, licence = FILE_INFO[name]
        table.append(f"| `{path.name}` | {len(rows)} | {path.stat().st_size} | {fmt} | {source} | {licence} |")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        print(f"{path}: {len(rows)} rows, {path.stat().st_size} bytes, sha256 {digest}")

    labeler = SimulatedLabeler()
    demos = splits["sft_train"] + splits["sft_eval"]
    scores = [labeler.score(r["prompt"][0]["content"], r["completion"][0]["content"]) for r in demos]
    readme = README_TEMPLATE.format(
        seed=args.seed,
        python_version=".".join(map(str, sys.version_info[:3])),
        python_minor=".".join(map(str, sys.version_info[:2])),
        platform=sys.platform,
        table="\n".join(table),
        n_topics=stats["n_topics"],
        min_score=MIN_DEMO_SCORE,
        mean_score=sum(scores) / len(scores),
        dropped=stats["dropped_demos"],
        n_heldout=stats["n_heldout_topics"],
        heldout=", ".join(stats["heldout_topics"]),
        n_modules=len(PTX_MODULES),
        ptx_heldout=", ".join(f"`{m}`" for m in ptx_heldout),
    )
    (args.out / "README.md").write_text(readme, encoding="utf-8", newline="\n")
    print(
        f"{args.out / 'README.md'}: mean demo score {sum(scores) / len(scores):.3f}, dropped {stats['dropped_demos']}"
    )


if __name__ == "__main__":
    main()
