"""Property-based tests of the row validators: on any malformed input only the project's error ever escapes."""

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instructrl.data.loading import json_problem, load_data, message_text, non_empty
from instructrl.data.rows import ranking_problem, validate_comparisons, validate_prompts
from instructrl.errors import DataError

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["role", "content", "x"]), inner),
    max_leaves=8,
)
COLUMNS = ["prompt", "responses", "scores", "chosen", "rejected"]
rows = st.dictionaries(st.sampled_from(COLUMNS), json_values, min_size=1)
valid_rankings = st.integers(2, 9).flatmap(
    lambda k: st.tuples(
        st.lists(st.text(min_size=1, max_size=8).filter(str.strip), min_size=k, max_size=k, unique_by=str.strip),
        st.lists(st.floats(allow_nan=False, allow_infinity=False) | st.integers(), min_size=k, max_size=k),
    )
)


@given(responses=json_values, scores=json_values)
def test_ranking_problem_names_a_problem_or_accepts_only_valid_rows(responses, scores):
    problem = ranking_problem(responses, scores)
    if problem is None:  # accepted: then it really is K distinct texts with one finite number each
        assert isinstance(responses, list) and 2 <= len(responses) <= 9 and len(scores) == len(responses)
        assert all(not isinstance(s, bool) and math.isfinite(s) for s in scores)
        texts = [message_text(r).strip() for r in responses]
        assert all(texts) and len(set(texts)) == len(texts)
    else:
        assert isinstance(problem, str) and problem


@given(valid_rankings)
def test_valid_rankings_are_accepted(ranking):
    responses, scores = ranking
    assert ranking_problem(responses, scores) is None


@given(json_values)
def test_non_empty_never_raises(value):
    assert non_empty(value) is None or isinstance(non_empty(value), str)


@given(st.binary(max_size=200))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_json_problem_never_raises_on_any_bytes(tmp_path, content):
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    problem = json_problem(path)
    assert problem is None or isinstance(problem, str)


@given(st.lists(rows, min_size=1, max_size=3))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_loading_and_validating_random_rows_raises_only_data_error(tmp_path, random_rows):
    """The real path a user's file takes (datasets' reader, then the validators): accepted, or one `DataError`."""
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in random_rows))
    for validate in (validate_comparisons, validate_prompts):
        try:
            validate(load_data(str(path)), "random data")
        except DataError:
            pass
