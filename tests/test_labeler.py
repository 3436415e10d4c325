"""Behaviour of the simulated labeler: each criterion rewards what it should, and the scorer is deterministic."""

import pytest

from instructrl.labeler import (
    LABELERS,
    Labeler,
    SimulatedLabeler,
    count_targets,
    decided_by,
    ends_cleanly_score,
    format_score,
    get_labeler,
    instruction_kinds,
    keywords_score,
    length_instruction,
    length_score,
    no_artifacts_score,
    no_repetition_score,
    on_topic_score,
    restate_count,
    start_end_score,
    style_score,
    topic_words,
)

GOOD_20 = (
    "Volcanoes are openings in the crust where molten rock reaches the surface. "
    "Pressure can push out lava, ash and gas."
)  # 20 words


def _n_words(n: int) -> str:
    return " ".join(["rock"] * (n - 1)) + " volcano."


@pytest.fixture
def labeler() -> SimulatedLabeler:
    return SimulatedLabeler()


def test_about_n_words_prefers_the_asked_length():
    prompt = "Describe volcanoes in about 20 words."
    assert length_score(prompt, GOOD_20) == 1.0
    assert length_score(prompt, _n_words(60)) < 0.1
    # The decay is smooth: a little off is still much better than far off.
    assert (
        1.0
        > length_score(prompt, _n_words(26))
        > length_score(prompt, _n_words(32))
        > length_score(prompt, _n_words(60))
    )
    assert length_score("Describe volcanoes in about twenty words.", GOOD_20) == 1.0


def test_at_most_n_words():
    prompt = "Explain tides in at most 12 words."
    assert length_score(prompt, _n_words(12)) == 1.0
    assert length_score(prompt, _n_words(8)) == 1.0
    assert length_score(prompt, _n_words(20)) < 0.5
    # "fewer than 12" excludes 12 itself.
    assert length_score("Explain tides in fewer than 12 words.", _n_words(12)) < 1.0
    assert length_score("Explain tides in fewer than 12 words.", _n_words(11)) == 1.0


def test_sentence_count():
    prompt = "In two sentences, explain tides."
    two = "Tides are the rise and fall of the sea. The moon causes them."
    assert length_score(prompt, two) == 1.0
    assert length_score(prompt, "Tides are the rise and fall of the sea.") < 0.5
    assert length_score("Explain tides in one sentence.", two) < 0.5
    assert length_score("Explain tides in a single sentence.", "Tides are the rise and fall of the sea.") == 1.0


def test_bullet_points():
    prompt = "Describe owls in three bullet points."
    bullets = "- Owls hunt at night.\n- They fly silently.\n- They have large eyes."
    prose = "Owls hunt at night. They fly silently. They have large eyes."
    assert format_score(prompt, bullets) == 1.0
    assert format_score(prompt, prose) == 0.0
    assert format_score(prompt, bullets + "\n- They eat mice.") < 0.5
    # The bullet count is the length instruction: no word-count preference on top of it.
    assert length_score(prompt, "- Owls.\n- Eyes.\n- Mice.") == 1.0


def test_numbered_list_and_paragraphs():
    numbered = "1. Owls hunt at night.\n2. They fly silently.\n3. They have large eyes."
    bullets = numbered.replace("1.", "-").replace("2.", "-").replace("3.", "-")
    for prompt in ("Describe owls as a numbered list of three items.", "Give three numbered points about owls."):
        assert format_score(prompt, numbered) == 1.0
        assert format_score(prompt, bullets) == 0.0
        assert format_score(prompt, "1. Owls hunt at night.\n2. They fly silently.") < 0.5
        assert instruction_kinds(prompt) == ["numbered"]
    prompt = "Describe owls in two paragraphs."
    assert format_score(prompt, "Owls hunt at night.\n\nThey have large eyes.") == 1.0
    assert format_score(prompt, "Owls hunt at night. They have large eyes.") < 0.5
    assert format_score("Describe owls.", "anything") == 1.0


def test_words_to_include_and_avoid():
    include = 'Describe volcanoes. Include the word "magma".'
    avoid = 'Describe volcanoes without using the word "magma".'
    with_word = "Volcanoes erupt when magma rises through the crust."
    without = "Volcanoes erupt when molten rock rises through the crust."
    assert keywords_score(include, with_word) == 1.0
    assert keywords_score(include, without) == pytest.approx(0.1)
    assert keywords_score(avoid, without) == 1.0
    assert keywords_score(avoid, with_word) == pytest.approx(0.1)
    # Two words asked: half credit for one; case and plural do not matter; "use" inside "do not use" is avoidance.
    both = 'Explain tides. Mention "moon" and use the word "gravity".'
    assert keywords_score(both, "The Moons pull the sea.") == pytest.approx(0.55)
    dont = 'Explain tides. Do not use the word "moon".'
    assert keywords_score(dont, "The moon pulls the sea.") == pytest.approx(0.1)
    assert instruction_kinds(include) == ["include"] and instruction_kinds(avoid) == ["avoid"]
    # The quoted word is a constraint, not the topic.
    assert topic_words(avoid) == ["volcano"]


def test_how_to_begin_and_end():
    start = 'Begin your answer with "In short" and describe tea.'
    assert start_end_score(start, "In short, tea is a drink made from leaves.") == 1.0
    assert start_end_score(start, "Tea is, in short, a drink.") == pytest.approx(0.1)
    end = 'Describe tea. End your reply with the phrase "That is all."'
    assert start_end_score(end, "Tea is a drink. That is all.") == 1.0
    assert start_end_score(end, "That is all. Tea is a drink.") == pytest.approx(0.1)
    question = "Describe tea and end with a question."
    assert start_end_score(question, "Tea is a drink. Do you like it?") == 1.0
    assert start_end_score(question, "Tea is a drink. Do you like it.") == pytest.approx(0.1)
    assert start_end_score("Describe tea.", "Anything at all") == 1.0


def test_letter_case_and_commas():
    lower = "Describe tea in all lowercase letters."
    assert style_score(lower, "tea is a drink made from leaves.") == 1.0
    assert style_score(lower, "Tea is a drink made from leaves.") == 0.5
    assert style_score(lower, "TEA IS A DRINK.") == pytest.approx(0.1)
    commas = "Describe tea. Do not use any commas."
    assert style_score(commas, "Tea is a drink made from leaves.") == 1.0
    assert style_score(commas, "Tea, a drink, is made from leaves.") == pytest.approx(1 / 3)
    assert style_score("Describe tea.", "TEA, TEA, TEA.") == 1.0
    assert instruction_kinds(lower) == ["lowercase"] and instruction_kinds(commas) == ["no_commas"]


def test_only_stated_constraints_take_part(labeler):
    plain = "Describe tea in one sentence."
    assert set(labeler.criteria(plain, "Tea is a drink.")) == {
        "length",
        "on_topic",
        "ends_cleanly",
        "no_repetition",
        "no_artifacts",
    }
    lower = "Describe tea in one sentence, in lowercase."
    assert "style" in labeler.criteria(lower, "Tea is a drink.")
    # Breaking a stated constraint costs the score; the same text without the constraint is not penalised.
    assert labeler.score(lower, "tea is a drink.") > labeler.score(lower, "Tea Is A Drink.") + 0.2
    assert labeler.score(plain, "Tea Is A Drink.") == labeler.score(plain, "tea is a drink.")
    assert sum(labeler.prompt_weights(lower).values()) == pytest.approx(1.0)


def test_deciding_criterion_and_shares(labeler):
    prompt = 'Describe volcanoes. Include the word "magma".'
    with_word = "Volcanoes erupt when magma rises through the crust."
    without = "Volcanoes erupt when molten rock rises through the crust."
    assert labeler.deciding_criterion(prompt, with_word, without) == "keywords"
    assert labeler.deciding_criterion(prompt, without, with_word) is None  # not the better one
    cut = "Volcanoes erupt when magma rises through the"
    assert labeler.deciding_criterion(prompt, with_word, cut) == "ends_cleanly"
    rows = [
        {"prompt": prompt, "responses": [with_word, without, cut], "scores": None},
        {"prompt": "Describe tea.", "responses": ["Tea is a drink.", "Tea is a drink."], "scores": None},
    ]
    for row in rows:
        row["scores"] = [labeler.score(row["prompt"], r) for r in row["responses"]]
    # Pairs: with_word > without (keywords), with_word > cut (ends_cleanly), cut > without (keywords: the asked word
    # weighs more than a clean ending); the tie counts for nothing.
    assert decided_by(labeler, rows) == {"keywords": pytest.approx(2 / 3), "ends_cleanly": pytest.approx(1 / 3)}


def test_default_length_without_instruction():
    prompt = "Tell me about owls."
    assert length_score(prompt, _n_words(30)) == 1.0
    assert length_score(prompt, _n_words(3)) < length_score(prompt, _n_words(30))
    assert length_score(prompt, _n_words(200)) < 0.2


def test_topic_words_skip_instructions_and_task_words():
    assert topic_words("What should a beginner know about the water cycle? Answer in about 20 words.") == [
        "water",
        "cycle",
    ]
    assert topic_words("Using three bullet points, explain volcanoes.") == ["volcano"]


def test_off_topic_scores_lower():
    prompt = "Explain photosynthesis in one sentence."
    on = "Photosynthesis is how plants turn sunlight into chemical energy."
    off = "Bicycles are two-wheeled machines powered by the rider's legs."
    assert on_topic_score(prompt, on) == 1.0
    assert on_topic_score(prompt, off) == 0.0
    assert on_topic_score("Describe the water cycle.", "Water evaporates from the sea.") == 0.5


def test_truncated_response_scores_lower_on_ends_cleanly():
    assert ends_cleanly_score("", "The moon orbits the Earth.") == 1.0
    assert ends_cleanly_score("", 'He said "the moon is bright."') == 1.0
    assert ends_cleanly_score("", "The moon orbits the Earth. It takes about a") < 0.5
    assert ends_cleanly_score("", "The moon orbits the Earth,") == 0.0
    assert ends_cleanly_score("", "The moon (our satellite orbits the Earth.") < 1.0


def test_repetition_scores_lower():
    clean = "Glaciers are huge masses of ice. They move slowly over land and carve valleys."
    looped = "Glaciers are huge masses of ice. " * 4
    stutter = "Glaciers are huge huge huge huge huge huge huge huge masses of ice."
    assert no_repetition_score("", clean) == 1.0
    assert no_repetition_score("", looped) < 0.3
    assert no_repetition_score("", stutter) < 0.7


def test_chat_artifacts_score_lower():
    assert no_artifacts_score("", "Tea is a drink made from leaves.") == 1.0
    assert no_artifacts_score("", "Sure! Here is an answer. Tea is a drink.") < 0.5
    assert no_artifacts_score("", "As an AI language model, I think tea is a drink.") < 0.5
    assert no_artifacts_score("", "Tea is a drink.<|im_end|>\n<|im_start|>user") < 0.5


def test_empty_response_scores_zero(labeler):
    assert labeler.score("Describe tea.", "") == 0.0
    assert labeler.score("Describe tea.", "   \n") == 0.0
    assert all(v == 0.0 for v in labeler.criteria("Describe tea.", "").values())


def test_score_range_and_criteria_keys(labeler):
    crit = labeler.criteria("Describe volcanoes in about 20 words.", GOOD_20)
    assert set(crit) == {"length", "on_topic", "ends_cleanly", "no_repetition", "no_artifacts"}
    assert set(labeler.weights) == set(SimulatedLabeler.CRITERIA)
    assert all(0.0 <= v <= 1.0 for v in crit.values())
    assert labeler.score("Describe volcanoes in about 20 words.", GOOD_20) == pytest.approx(1.0)
    assert sum(labeler.weights.values()) == pytest.approx(1.0)


def test_every_criterion_failure_lowers_the_score(labeler):
    prompt = "Describe volcanoes in about 20 words."
    good = labeler.score(prompt, GOOD_20)
    bad = {
        "too long": GOOD_20 + " " + " ".join(["Volcanic ash makes soil rich for farming over many years."] * 4),
        "off topic": "Bicycles are machines powered by legs. Riders push pedals that turn a chain to move.",
        "truncated": GOOD_20[:-1] + " and also the hot",
        "repetitive": "Volcanoes are openings in the crust. " * 3,
        "filler": "Sure! Here is an answer. " + GOOD_20,
    }
    for what, response in bad.items():
        assert labeler.score(prompt, response) < good - 0.1, what


def test_rank_orders_hand_made_responses(labeler):
    prompt = "Explain the moon in one sentence."
    responses = [
        "Sure! Here is the thing about the moon: it is",  # filler, truncated
        "The moon is the natural satellite that orbits the Earth.",  # best
        "Bananas are a yellow fruit.",  # off topic
        # Three sentences where one was asked for.
        "The moon is the natural satellite that orbits the Earth. It reflects sunlight. It causes tides.",
    ]
    order = labeler.rank(prompt, responses)
    assert order[0] == 1
    assert order.index(3) < order.index(2)
    assert sorted(order) == [0, 1, 2, 3]
    # Ties keep the original order.
    assert labeler.rank(prompt, ["The moon is round.", "The moon is round."]) == [0, 1]


def test_deterministic(labeler):
    prompt = "Describe volcanoes in about 20 words."
    assert SimulatedLabeler().score(prompt, GOOD_20) == labeler.score(prompt, GOOD_20)
    assert [labeler.score(prompt, _n_words(33)) for _ in range(3)] == [labeler.score(prompt, _n_words(33))] * 3


def test_custom_weights_and_validation():
    only_length = SimulatedLabeler(weights={"length": 2.0})
    assert only_length.weights == {"length": 1.0}
    assert only_length.score("Explain tea in one sentence.", "Bananas are yellow.") == 1.0
    with pytest.raises(ValueError, match="length"):
        SimulatedLabeler(weights={"lenght": 1.0})


def test_registry():
    labeler = get_labeler("simulated")
    assert isinstance(labeler, SimulatedLabeler)
    assert isinstance(labeler, Labeler)
    assert labeler.name == "simulated"
    assert LABELERS == {"simulated": SimulatedLabeler}
    with pytest.raises(ValueError, match=r"'nope'.*simulated"):
        get_labeler("nope")


@pytest.mark.parametrize(
    ("prompt", "number", "expected"),
    [
        ("Explain trains in no more than 30 words.", 10, "Explain trains in no more than 10 words."),
        ("Describe owls in one sentence, please.", 3, "Describe owls in three sentences, please."),
        ("Describe owls in a single sentence.", 2, "Describe owls in two sentences."),
        ("Describe owls in 3 sentences.", 1, "Describe owls in 1 sentence."),
        (
            "In about fifty words, describe sleep. Do not use commas.",
            35,
            "In about 35 words, describe sleep. Do not use commas.",
        ),
        ("Give three bullet points about bees.", 1, "Give one bullet point about bees."),
        ("Write a numbered list of 4 items about rain.", 6, "Write a numbered list of 6 items about rain."),
        ("In three paragraphs, share facts about the violin.", 2, "In two paragraphs, share facts about the violin."),
        # A list's count is read before a word limit in the same prompt (as `length_score` reads them).
        ("List 3 bullet points about tea in under 40 words.", 5, "List 5 bullet points about tea in under 40 words."),
    ],
)
def test_restate_count_changes_only_the_stated_number(prompt, number, expected):
    assert restate_count(prompt, number) == expected


def test_restate_count_without_a_count_instruction():
    assert restate_count("Describe owls in all lowercase letters.", 3) is None
    assert restate_count("Describe owls in 3 sentences.", 0) is None


def test_count_targets_are_each_responses_own_count():
    short, long = _n_words(12), _n_words(33)
    # A word limit rounds up to a multiple of 5, so that the response stays within it.
    assert count_targets("Describe tea in about 20 words.", [short, long, "Tea."]) == [12, 33, 1]
    assert count_targets("Describe tea in at most 20 words.", [short, long, "Tea."]) == [15, 35, 5]
    assert count_targets("Describe tea in under 20 words.", [_n_words(15), long]) == [20, 35]  # 15 is not under 15
    assert count_targets("Describe tea in two sentences.", ["Tea is hot. It is old. Yes.", "Tea."]) == [3, 1]
    assert count_targets("Give 2 bullet points on tea.", ["- hot\n- old\n- green", "Tea."]) == [3, 1]
    assert count_targets("Describe tea.", [short]) == []
    # Under the restated number, the response it was taken from meets the instruction exactly.
    cases = [
        ("Describe tea in about 20 words.", [short, long], length_score),
        ("Describe tea in at most 20 words.", [short, long], length_score),
        ("Describe tea in fewer than 20 words.", [_n_words(15), _n_words(25)], length_score),
        ("Describe tea in two sentences.", ["Tea is hot. It is old. Yes.", "Tea."], length_score),
        ("Give 2 bullet points on tea.", ["- hot\n- old\n- green", "- hot"], format_score),
    ]
    for prompt, responses, score in cases:
        assert score(prompt, responses[0]) < 1.0 or score(prompt, responses[1]) < 1.0
        for response, number in zip(responses, count_targets(prompt, responses), strict=True):
            assert score(restate_count(prompt, number), response) == 1.0


def test_length_instruction_names_what_length_score_reads():
    assert length_instruction("Describe tea in about 20 words.") == "about N words"
    assert length_instruction("Describe tea in under twenty words.") == "at most N words"
    assert length_instruction("Describe tea in two sentences, in about 20 words.") == "N sentences"  # read first
    assert length_instruction("Give 3 bullet points about tea in at most 40 words.") == "a list or paragraphs"
    assert length_instruction("Describe tea.") == "none"
    assert SimulatedLabeler().length_instruction("Describe tea in about 9 words.") == "about N words"
