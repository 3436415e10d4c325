"""Human rankings (InstructGPT step 2 by people): the task store behind `make label`.

`recipes/collect.py --labeler human` samples K responses per prompt and writes them as pending tasks,
`tasks.jsonl`, into the comparisons directory. People rank them in the web page (`instructrl.label_server`); every
action is one line appended to `labels.jsonl` (submit, skip, undo), under a file lock, flushed and fsynced before the
server answers. The rankings `make rm` trains on, `rankings/{train,test}.jsonl` and `pairs/{train,test}.jsonl` in the
exact format the simulated labeler writes (scores from the rank, `labeler` = the person's name), are rewritten from
that log after each action, atomically (temporary file + rename). Restarting the server rebuilds everything from the
log, so nothing is lost and each person resumes at their first task not yet done.

Assignment: a task is served to one person, unless it is in the `overlap` set (a seeded fraction of the tasks, served
to everyone), which measures inter-labeler agreement as InstructGPT did (~73% between its labelers). A task shown to
someone is held for them for `hold_seconds`, so two people ranking at once get different tasks; a second ranking of
a non-overlap task, or a person ranking the same task twice (a double click, two tabs), is refused.
"""

import fcntl
import hashlib
import json
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from .comparisons import ranking_to_pairs, split_by_prompt, write_jsonl
from .data.loading import message_text
from .errors import DataError

HUMAN = "human"
TASKS_FILE = "tasks.jsonl"
LOG_FILE = "labels.jsonl"
FLAGS = ("fails_task", "breaks_constraint", "inappropriate", "made_up")
MAX_NOTE = 2000


class LabelConflict(Exception):
    """A submission that cannot be accepted as it stands (already ranked, nothing to undo): the page says why."""


def write_tasks(output_dir: Path, prompts: list, samples: list[list[str]], test_fraction: float, seed: int) -> dict:
    """Write the pending tasks of `collect --labeler human`: one per prompt, its distinct responses, and its split."""
    rows = [{"prompt": p, "responses": r} for p, r in zip(prompts, samples, strict=True) if len(r) >= 2]
    train, test = split_by_prompt(rows, test_fraction, seed)
    tasks = [
        {"id": f"t{i:05d}", **row, "split": split}
        for i, (row, split) in enumerate([(r, "train") for r in train] + [(r, "test") for r in test])
    ]
    write_jsonl(Path(output_dir) / TASKS_FILE, tasks)
    return {"tasks": len(tasks), "train_tasks": len(train), "test_tasks": len(test)}


def scores_from_order(order: list[int]) -> list[float]:
    """Scores for the responses (by original index) of a ranking given best first: K-1 for the best ... 0."""
    scores = [0.0] * len(order)
    for place, index in enumerate(order):
        scores[index] = float(len(order) - 1 - place)
    return scores


@dataclass
class Submission:
    id: str
    task: str
    labeler: str
    order: list[int]
    flags: dict[int, list[str]] = field(default_factory=dict)
    note: str = ""
    time: float = 0.0


class TaskStore:
    """Tasks, the action log and the derived ranking files of one comparisons directory.

    Args:
        directory (`Path`):
            The comparisons directory holding `tasks.jsonl` (written by `collect --labeler human`).
        overlap (`float`, *optional*, defaults to `0.1`):
            Fraction of tasks served to every labeler (for agreement), chosen by a hash of the task id.
        hold_seconds (`float`, *optional*, defaults to `600`):
            How long a task shown to one person is kept from the others.
    """

    def __init__(self, directory: Path, overlap: float = 0.1, hold_seconds: float = 600.0):
        self.directory = Path(directory).expanduser()
        tasks_path = self.directory / TASKS_FILE
        if not tasks_path.is_file():
            raise DataError(
                f"No tasks to rank in '{self.directory}' (no {TASKS_FILE}). Run `make collect LABELER=human` first, "
                "or point `comparisons_dir` at its output."
            )
        self.tasks = [json.loads(line) for line in tasks_path.read_text().splitlines() if line.strip()]
        for number, task in enumerate(self.tasks, start=1):
            if not {"id", "prompt", "responses", "split"} <= set(task) or len(task["responses"]) < 2:
                raise DataError(f"'{tasks_path}' line {number} is not a task written by `collect --labeler human`.")
        self.by_id = {task["id"]: task for task in self.tasks}
        if not 0.0 <= overlap <= 1.0:
            raise DataError(f"`overlap` is {overlap} but must be between 0 and 1.")
        self.overlap = overlap
        self.hold_seconds = hold_seconds
        self.holds: dict[str, tuple[str, float]] = {}  # task -> (labeler, until)
        self.log_path = self.directory / LOG_FILE
        self.lock_path = self.directory / ".labels.lock"

    # -- the log ----------------------------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        # A file lock, not a thread lock: two server processes on one directory must not interleave either.
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def events(self) -> list[dict]:
        if not self.log_path.is_file():
            return []
        events = []
        for line in self.log_path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write: it was never acknowledged
        return events

    def _append(self, event: dict) -> None:
        with open(self.log_path, "a") as log:
            log.write(json.dumps(event, ensure_ascii=False) + "\n")
            log.flush()
            os.fsync(log.fileno())

    def submissions(self, events: list[dict] | None = None) -> list[Submission]:
        """The submissions in force: every submit not undone, in order."""
        events = self.events() if events is None else events
        undone = {e["undo"] for e in events if e.get("type") == "undo"}
        return [
            Submission(
                id=e["id"],
                task=e["task"],
                labeler=e["labeler"],
                order=e["order"],
                flags={int(k): v for k, v in e.get("flags", {}).items()},
                note=e.get("note", ""),
                time=e.get("time", 0.0),
            )
            for e in events
            if e.get("type") == "submit" and e["id"] not in undone
        ]

    # -- assignment -------------------------------------------------------------------------------------------------
    def in_overlap(self, task_id: str) -> bool:
        digest = hashlib.sha256(task_id.encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.overlap

    def progress(self, events: list[dict] | None = None) -> dict:
        ranked = {s.task for s in self.submissions(events)}
        return {"ranked": len(ranked), "total": len(self.tasks)}

    def next_task(self, labeler: str) -> dict | None:
        """The first task this labeler may rank now, held for them; `None` when there is none left."""
        labeler = check_labeler(labeler)
        now = time.time()
        with self._locked():
            events = self.events()
            submissions = self.submissions(events)
            mine = {s.task for s in submissions if s.labeler == labeler}
            skipped = {e["task"] for e in events if e.get("type") == "skip" and e["labeler"] == labeler}
            taken = {s.task for s in submissions}
            for task in self.tasks:
                tid = task["id"]
                if tid in mine or tid in skipped:
                    continue
                overlap = self.in_overlap(tid)
                if not overlap and tid in taken:
                    continue
                holder, until = self.holds.get(tid, (labeler, 0.0))
                if not overlap and holder != labeler and until > now:
                    continue
                self.holds[tid] = (labeler, now + self.hold_seconds)
                return self.present(task, labeler)
        return None

    def present(self, task: dict, labeler: str) -> dict:
        """The task as one labeler sees it: responses in an order shuffled per task and person (stable on reload)."""
        order = list(range(len(task["responses"])))
        random.Random(f"{task['id']}/{labeler}").shuffle(order)
        return {
            "id": task["id"],
            "prompt": message_text(task["prompt"]),
            "responses": [{"index": i, "text": message_text(task["responses"][i])} for i in order],
        }

    # -- actions ----------------------------------------------------------------------------------------------------
    def submit(
        self, task_id: str, labeler: str, order: list[int], flags: dict | None = None, note: str = ""
    ) -> Submission:
        """Record one ranking (response indices, best first) and rewrite the ranking files.

        Raises:
            DataError: the task, the order, the flags or the note is malformed.
            LabelConflict: this person already ranked the task, or someone else did and it is not an overlap task.
        """
        labeler = check_labeler(labeler)
        task = self.by_id.get(task_id)
        if task is None:
            raise DataError(f"Unknown task '{task_id}'.")
        k = len(task["responses"])
        if sorted(order) != list(range(k)) or not all(type(i) is int for i in order):
            raise DataError(f"The ranking must order all {k} responses exactly once, got {order}.")
        flags = clean_flags(flags or {}, k)
        if not isinstance(note, str) or len(note) > MAX_NOTE:
            raise DataError(f"The note must be text of at most {MAX_NOTE} characters.")
        with self._locked():
            submissions = self.submissions()
            if any(s.task == task_id and s.labeler == labeler for s in submissions):
                raise LabelConflict(f"You already ranked task {task_id}.")
            if not self.in_overlap(task_id) and any(s.task == task_id for s in submissions):
                other = next(s.labeler for s in submissions if s.task == task_id)
                raise LabelConflict(f"Task {task_id} was just ranked by {other}; here is another one.")
            event = {
                "type": "submit",
                "id": f"{task_id}/{labeler}/{time.time_ns()}",
                "task": task_id,
                "labeler": labeler,
                "order": order,
                "flags": {str(i): v for i, v in flags.items()},
                "note": note,
                "time": time.time(),
            }
            self._append(event)
            self.holds.pop(task_id, None)
            self.write_rankings()
        return self.submissions([event])[0]

    def skip(self, task_id: str, labeler: str) -> None:
        labeler = check_labeler(labeler)
        if task_id not in self.by_id:
            raise DataError(f"Unknown task '{task_id}'.")
        with self._locked():
            self._append({"type": "skip", "task": task_id, "labeler": labeler, "time": time.time()})
            self.holds.pop(task_id, None)

    def undo(self, labeler: str) -> str:
        """Withdraw this labeler's last submission still in force; returns its task id (served again next)."""
        labeler = check_labeler(labeler)
        with self._locked():
            mine = [s for s in self.submissions() if s.labeler == labeler]
            if not mine:
                raise LabelConflict("Nothing to undo.")
            last = mine[-1]
            self._append({"type": "undo", "undo": last.id, "labeler": labeler, "time": time.time()})
            self.write_rankings()
        return last.task

    # -- outputs ----------------------------------------------------------------------------------------------------
    def rankings(self, submissions: list[Submission] | None = None) -> dict[str, list[dict]]:
        """Ranking rows per split, in the simulated labeler's format plus the task id, flags and note."""
        rows: dict[str, list[dict]] = {"train": [], "test": []}
        for sub in self.submissions() if submissions is None else submissions:
            task = self.by_id[sub.task]
            rows[task["split"]].append(
                {
                    "prompt": task["prompt"],
                    "responses": task["responses"],
                    "scores": scores_from_order(sub.order),
                    "ranking": sub.order,
                    "labeler": sub.labeler,
                    "task": sub.task,
                    "flags": {str(i): v for i, v in sub.flags.items()},
                    "note": sub.note,
                }
            )
        return rows

    def write_rankings(self) -> None:
        """Rewrite `rankings/` and `pairs/` (each file atomically) from the submissions in force.

        A split with no ranking yet has no file (datasets cannot read an empty one): `make rm` then reports that the
        split is missing instead of training on rankings left from an earlier collection.
        """
        for split, rows in self.rankings().items():
            for kind, kind_rows in (("rankings", rows), ("pairs", [p for r in rows for p in ranking_to_pairs(r)])):
                path = self.directory / kind / f"{split}.jsonl"
                if kind_rows:
                    write_jsonl(path, kind_rows)
                else:
                    path.unlink(missing_ok=True)


def check_labeler(name) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 64:
        raise DataError("A labeler name (1 to 64 characters) is required.")
    return name.strip()


def clean_flags(flags: dict, k: int) -> dict[int, list[str]]:
    """`{response index: [flag, ...]}` with known flags only."""
    if not isinstance(flags, dict):
        raise DataError("`flags` must map response indices to lists of flags.")
    cleaned = {}
    for key, values in flags.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise DataError(f"Flag key {key!r} is not a response index.") from None
        if not 0 <= index < k or not isinstance(values, list) or not set(values) <= set(FLAGS):
            raise DataError(f"Flags for response {key!r} must be a list drawn from {list(FLAGS)}.")
        if values:
            cleaned[index] = sorted(set(values))
    return cleaned


# -- agreement --------------------------------------------------------------------------------------------------------
def pairwise_agreement(first: list[int], second: list[int]) -> tuple[int, int]:
    """(pairs ordered the same, pairs) between two rankings (best first) of the same responses."""
    place_a = {r: i for i, r in enumerate(first)}
    place_b = {r: i for i, r in enumerate(second)}
    pairs = list(combinations(sorted(place_a), 2))
    same = sum((place_a[x] < place_a[y]) == (place_b[x] < place_b[y]) for x, y in pairs)
    return same, len(pairs)


def agreement(store: TaskStore, labeler=None) -> dict:
    """Inter-labeler pairwise agreement on tasks ranked by several people, and each person's agreement with `labeler`.

    Args:
        labeler (`Labeler`, *optional*):
            An automatic labeler (the simulated one) to compare each person with; its tied pairs are left out.
    """
    by_task: dict[str, list[Submission]] = {}
    for sub in store.submissions():
        by_task.setdefault(sub.task, []).append(sub)
    same = total = 0
    for subs in by_task.values():
        for a, b in combinations(subs, 2):
            s, n = pairwise_agreement(a.order, b.order)
            same, total = same + s, total + n
    result = {
        "labelers": sorted({s.labeler for subs in by_task.values() for s in subs}),
        "tasks_ranked": len(by_task),
        "tasks_with_several_labelers": sum(len({s.labeler for s in subs}) > 1 for subs in by_task.values()),
        "inter_labeler": {"agreement": same / total if total else None, "pairs": total},
    }
    if labeler is not None:
        per_person: dict[str, list[int]] = {}
        for subs in by_task.values():
            for sub in subs:
                task = store.by_id[sub.task]
                scores = [labeler.score(message_text(task["prompt"]), message_text(r)) for r in task["responses"]]
                place = {r: i for i, r in enumerate(sub.order)}
                for x, y in combinations(range(len(scores)), 2):
                    if scores[x] != scores[y]:
                        counts = per_person.setdefault(sub.labeler, [0, 0])
                        counts[0] += (place[x] < place[y]) == (scores[x] > scores[y])
                        counts[1] += 1
        result[f"with_{labeler.name}"] = {
            name: {"agreement": s / n if n else None, "pairs": n} for name, (s, n) in sorted(per_person.items())
        }
    return result
