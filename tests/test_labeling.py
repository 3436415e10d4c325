"""Human rankings: the task store (no server), the real server (uvicorn), and the page in a real Chromium."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import RECIPES, write_config
from instructrl.data.loading import load_data
from instructrl.data.rows import tokenize_comparisons, validate_comparisons
from instructrl.errors import DataError
from instructrl.labeler import SimulatedLabeler
from instructrl.labeling import (
    LOG_FILE,
    LabelConflict,
    TaskStore,
    agreement,
    pairwise_agreement,
    scores_from_order,
    write_tasks,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCRIPT = "<script>window.pwned = true</script> is not run"


def make_tasks(directory: Path, n: int = 6, k: int = 3) -> Path:
    prompts = [[{"role": "user", "content": f"Describe topic {i} in about ten words."}] for i in range(n)]
    samples = [[f"Answer {j} about topic {i}." for j in range(k)] for i in range(n)]
    samples[0][1] = SCRIPT
    write_tasks(directory, prompts, samples, test_fraction=0.2, seed=0)
    return directory


def read_rankings(directory: Path) -> list[dict]:
    rows = []
    for split in ("train", "test"):
        path = directory / "rankings" / f"{split}.jsonl"
        rows += [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return rows


# -- the store --------------------------------------------------------------------------------------------------------
def test_scores_follow_the_rank():
    assert scores_from_order([2, 0, 1]) == [1.0, 0.0, 2.0]
    assert pairwise_agreement([0, 1, 2], [0, 2, 1]) == (2, 3)


def test_a_submission_is_written_in_the_format_make_rm_reads(tmp_path, tokenizer):
    store = TaskStore(make_tasks(tmp_path), overlap=0.0)
    served = store.next_task("ana")
    task = store.by_id[served["id"]]
    order = [2, 0, 1]
    store.submit(served["id"], "ana", order, flags={"1": ["made_up"]}, note="second is invented")
    (row,) = read_rankings(tmp_path)
    assert row["prompt"] == task["prompt"] and row["responses"] == task["responses"]
    assert row["scores"] == [1.0, 0.0, 2.0] and row["ranking"] == order and row["labeler"] == "ana"
    assert row["flags"] == {"1": ["made_up"]} and row["note"] == "second is invented"
    split = task["split"]
    data = validate_comparisons(load_data(str(tmp_path / "rankings"), split), "human rankings")
    tokenized = tokenize_comparisons(data, tokenizer, None)
    assert tokenized[0]["scores"] == [1.0, 0.0, 2.0]
    pairs = [json.loads(line) for line in (tmp_path / "pairs" / f"{split}.jsonl").read_text().splitlines()]
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {
        (task["responses"][2], task["responses"][0]),
        (task["responses"][2], task["responses"][1]),
        (task["responses"][0], task["responses"][1]),
    }


def test_restarting_resumes_at_the_first_unranked_task_and_undo_serves_it_again(tmp_path):
    store = TaskStore(make_tasks(tmp_path), overlap=0.0)
    first = store.next_task("ana")["id"]
    store.submit(first, "ana", [0, 1, 2])
    second = store.next_task("ana")["id"]
    store.skip(second, "ana")
    third = store.next_task("ana")["id"]
    store.submit(third, "ana", [1, 0, 2])
    restarted = TaskStore(tmp_path, overlap=0.0)  # a new server process: everything comes from the log
    assert restarted.progress() == {"ranked": 2, "total": 6}
    assert restarted.next_task("ana")["id"] not in (first, second, third)
    assert restarted.undo("ana") == third
    assert [r["task"] for r in read_rankings(tmp_path)] == [first]
    assert TaskStore(tmp_path, overlap=0.0).next_task("ana")["id"] == third
    with pytest.raises(LabelConflict, match="Nothing to undo"):
        TaskStore(tmp_path).undo("ben")


def test_each_task_goes_to_one_person_except_the_overlap_share(tmp_path):
    store = TaskStore(make_tasks(tmp_path, n=8), overlap=0.0)
    a, b = store.next_task("ana")["id"], store.next_task("ben")["id"]
    assert a != b  # held for the person it was shown to
    store.submit(a, "ana", [0, 1, 2])
    with pytest.raises(LabelConflict, match="just ranked by ana"):
        store.submit(a, "ben", [0, 1, 2])
    with pytest.raises(LabelConflict, match="already ranked"):
        store.submit(a, "ana", [0, 1, 2])
    everyone = TaskStore(tmp_path / "overlap", overlap=1.0) if make_tasks(tmp_path / "overlap") else None
    shared = everyone.next_task("ana")["id"]
    assert everyone.next_task("ben")["id"] == shared
    everyone.submit(shared, "ana", [0, 1, 2])
    everyone.submit(shared, "ben", [0, 2, 1])
    stats = agreement(everyone, SimulatedLabeler())
    assert stats["tasks_with_several_labelers"] == 1
    assert stats["inter_labeler"] == {"agreement": 2 / 3, "pairs": 3}
    assert set(stats["with_simulated"]) == {"ana", "ben"}
    half = TaskStore(tmp_path / "overlap", overlap=0.5)
    share = sum(half.in_overlap(f"t{i:05d}") for i in range(2000)) / 2000
    assert 0.45 < share < 0.55


def test_concurrent_submissions_are_neither_lost_nor_duplicated(tmp_path):
    store = TaskStore(make_tasks(tmp_path, n=12), overlap=0.0)
    ids = [t["id"] for t in store.tasks]
    # Two people submit every task at once, from many threads: each task is accepted exactly once.
    jobs = [(tid, name) for tid in ids for name in ("ana", "ben")]

    def submit(job):
        try:
            TaskStore(tmp_path, overlap=0.0).submit(job[0], job[1], [0, 1, 2])
            return job
        except LabelConflict:
            return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        accepted = [job for job in pool.map(submit, jobs) if job]
    assert sorted(tid for tid, _ in accepted) == sorted(ids)
    assert sorted(r["task"] for r in read_rankings(tmp_path)) == sorted(ids)
    log = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert len(log) == len(ids)


@pytest.mark.parametrize(
    "order, flags, note, message",
    [
        ([0, 1], {}, "", "order all 3 responses exactly once"),
        ([0, 0, 1], {}, "", "exactly once"),
        ([0, 1, 2], {"7": ["made_up"]}, "", "Flags for response '7'"),
        ([0, 1, 2], {"0": ["rude"]}, "", "drawn from"),
        ([0, 1, 2], {}, "x" * 3000, "at most 2000"),
    ],
)
def test_malformed_submissions_write_nothing(tmp_path, order, flags, note, message):
    store = TaskStore(make_tasks(tmp_path))
    with pytest.raises(DataError, match=message):
        store.submit(store.tasks[0]["id"], "ana", order, flags, note)
    assert not (tmp_path / LOG_FILE).exists() or not (tmp_path / LOG_FILE).read_text()


def test_missing_tasks_name_the_command_that_writes_them(tmp_path):
    with pytest.raises(DataError, match="make collect LABELER=human"):
        TaskStore(tmp_path)


# -- the real server ------------------------------------------------------------------------------------------------
def start_server(directory: Path, tmp_path: Path, host: str = "127.0.0.1") -> tuple[subprocess.Popen, str]:
    config = write_config(tmp_path / "label.yaml", comparisons_dir=str(directory), host=host, port=0, overlap=0.0)
    process = subprocess.Popen(
        [sys.executable, str(RECIPES / "label.py"), "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in process.stdout:
        if "Ranking page: " in line:
            return process, line.split("Ranking page: ")[1].split()[0].rstrip("/")
    raise AssertionError(f"the server did not start (exit {process.wait()})")


def call(url: str, body: dict | None = None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture()
def server(tmp_path):
    directory = make_tasks(tmp_path / "comparisons")
    process, url = start_server(directory, tmp_path)
    yield directory, url
    process.terminate()
    process.wait(timeout=30)


def test_server_answers_malformed_posts_with_4xx_and_writes_nothing(server):
    directory, url = server
    task = call(f"{url}/api/next?labeler=ana")[1]["task"]["id"]
    cases = [
        (None, b"{not json", 422),
        ({"task": task, "labeler": "ana"}, None, 422),  # no order
        ({"task": task, "labeler": "ana", "order": "first"}, None, 422),
        ({"task": task, "labeler": "ana", "order": [0, 1]}, None, 400),
        ({"task": "t99999", "labeler": "ana", "order": [0, 1, 2]}, None, 400),
        ({"task": task, "labeler": "", "order": [0, 1, 2]}, None, 422),
    ]
    for body, raw, status in cases:
        code, answer = call(f"{url}/api/submit", body, raw)
        assert code == status and answer["detail"], (body, raw, code, answer)
    assert call(f"{url}/api/undo", {"labeler": "ana"})[0] == 409
    assert not (directory / LOG_FILE).exists()
    assert call(f"{url}/api/submit", {"task": task, "labeler": "ana", "order": [1, 2, 0]}) == (
        200,
        {"ok": True, "progress": {"ranked": 1, "total": 6}},
    )
    assert [r["ranking"] for r in read_rankings(directory)] == [[1, 2, 0]]


def non_loopback_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), or `None`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_server_refuses_other_hosts_unless_opened(tmp_path):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to send a request from")
    directory = make_tasks(tmp_path / "comparisons")
    import uvicorn

    from instructrl.label_server import create_app  # served in-process here: the address it binds is the point

    for allow_remote, expected in ((False, 403), (True, 200)):
        app = create_app(TaskStore(directory), allow_remote=allow_remote)
        sock = socket.socket()
        sock.bind(("0.0.0.0", 0))
        port = sock.getsockname()[1]
        uvicorn_server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            while not uvicorn_server.started:
                threading.Event().wait(0.05)
            assert call(f"http://{address}:{port}/api/next?labeler=ana")[0] == expected
            assert call(f"http://127.0.0.1:{port}/api/next?labeler=ana")[0] == 200
        finally:
            uvicorn_server.should_exit = True
            thread.join(timeout=10)


# -- the page in a real browser -------------------------------------------------------------------------------------
def chromium_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; it comes with `make setup`)")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's `chromium` package (`.ci/run` does where it can)")
    return sync_playwright


def wait_for_progress(page, ranked: int) -> None:
    page.wait_for_function(f"document.querySelector('#progress').textContent.startsWith('{ranked} of')")


@pytest.mark.browser
def test_ranking_in_a_real_browser_with_mouse_and_keyboard(server, tmp_path):
    sync_playwright = chromium_or_skip()
    directory, url = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(url)
        page.fill("#name", "ana")
        page.click("text=Start ranking")
        page.wait_for_selector(".card")
        assert page.text_content("#progress") == "0 of 6 ranked"
        # Task 1 holds a response with a script tag: shown as text, never run.
        assert page.locator(".card .text", has_text="<script>").count() == 1
        assert page.evaluate("window.pwned === undefined")
        expected = []
        for _ in range(2):  # two tasks ranked with the mouse: click the cards from best to worst (shown order 3, 1, 2)
            cards = page.locator(".card")
            indices = [int(cards.nth(i).get_attribute("data-index")) for i in range(3)]
            cards.nth(2).locator(".text").click()
            cards.nth(0).locator(".text").click()  # the last one left is filled in as the worst
            expected.append([indices[2], indices[0], indices[1]])
            page.click("#submit")
            wait_for_progress(page, len(expected))
        # The third with the keyboard: number keys rank, Enter submits (a flag ticked on the way keeps them working).
        cards = page.locator(".card")
        indices = [int(cards.nth(i).get_attribute("data-index")) for i in range(3)]
        page.keyboard.press("2")
        page.keyboard.press("3")
        page.locator(".card").nth(0).locator("input[data-flag=made_up]").check()
        page.keyboard.press("Enter")
        wait_for_progress(page, 3)
        third = [indices[1], indices[2], indices[0]]
        # Undo the last submission (U), then reload: the page comes back at the first unranked task.
        page.keyboard.press("u")
        wait_for_progress(page, 2)
        page.screenshot(path=str(tmp_path / "label_page.png"))
        page.reload()
        page.wait_for_selector(".card")
        assert page.text_content("#progress") == "2 of 6 ranked"
        assert page.text_content("#who") == "Ranking as ana"  # asked once
        assert sorted(int(c.get_attribute("data-index")) for c in page.locator(".card").all()) == [0, 1, 2]
        browser.close()
    rows = read_rankings(directory)
    assert sorted(r["ranking"] for r in rows) == sorted(expected)
    assert all(r["labeler"] == "ana" for r in rows)
    log = [json.loads(line) for line in (directory / LOG_FILE).read_text().splitlines()]
    assert [e["type"] for e in log] == ["submit", "submit", "submit", "undo"]
    assert log[2]["order"] == third and log[2]["flags"] == {str(indices[0]): ["made_up"]}
