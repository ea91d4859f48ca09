"""Registry defects found by hand: per-example eval results that were misread or double-counted, significance
settings that declared any difference a winner, and a ``--json`` command that printed text."""

from __future__ import annotations

import json

import pytest

from fastml.cli import main
from fastml.errors import InvalidInput, NotFound
from fastml.registry import compare as _compare


def _nothing_registered(reg, name: str) -> bool:
    with pytest.raises(NotFound):
        reg.list_versions(name)
    return reg.events() == []


@pytest.mark.parametrize(
    "results, field",
    [
        # Non-empty strings were read as "correct" by numpy: "no" counted as a right answer.
        ({"correct": ["no", "yes", "no"]}, "'no'"),
        ({"correct": ["false", "true"]}, "'false'"),
        # Any non-zero number was a right answer, so a mislabelled 2 or 0.5 slipped in.
        ({"correct": [1, 0, 2]}, "2"),
        ({"correct": [0.5, 1.0]}, "0.5"),
    ],
)
def test_correctness_that_is_not_true_or_false_is_refused(sqlite_reg, artifact, results, field):
    with pytest.raises(InvalidInput, match=rf"'correct' holds {field}"):
        sqlite_reg.register("m", artifact("a"), eval_results=results, actor="ana")
    assert _nothing_registered(sqlite_reg, "m")


def test_correctness_as_booleans_or_zero_one_is_accepted(sqlite_reg, artifact):
    sqlite_reg.register("m", artifact("a"), metrics={"acc": 0.5}, eval_results={"correct": [1, 0]}, actor="ana")
    sqlite_reg.register("m", artifact("b"), metrics={"acc": 1.0}, eval_results={"correct": [True, True]}, actor="ana")
    (test,) = sqlite_reg.compare(["m:1.0.0", "m:1.0.1"], "acc")["tests"]
    assert (test["only_a_correct"], test["only_b_correct"]) == (1, 0)


def test_repeated_example_ids_are_refused_not_counted_twice(sqlite_reg, artifact):
    # Version A names ONE example thirty times; pairing by id matched every copy with B's example 0, so McNemar
    # saw 30 discordant pairs (p ~ 2e-9) where one shared example exists.
    dup = {"correct": [True] * 30, "example_ids": [0] * 30}
    with pytest.raises(InvalidInput, match="example_id 0 appears more than once"):
        sqlite_reg.register("m", artifact("a"), metrics={"acc": 1.0}, eval_results=dup, actor="ana")
    assert _nothing_registered(sqlite_reg, "m")
    # Results stored before this check are refused when compared, never paired many-to-one.
    other = {"correct": [False] * 30, "example_ids": list(range(30))}
    with pytest.raises(InvalidInput, match="more than once"):
        _compare.significance(dup, other, "m:1.0.0", "m:1.0.1")


@pytest.mark.parametrize(
    "results, match",
    [
        ({"correct": [True], "example_ids": 5}, "example_ids must be a list"),
        ({"scores": [1.0, 2.0], "example_ids": [[1], [2]]}, "example_ids must be a list"),
        ({"scores": [1.0], "example_ids": [True]}, "example_ids must be a list"),
        ({"scores": ["a", "b"]}, "'scores' must be numbers"),
        ({"scores": [1.0, None]}, "'scores' must be"),
        ({"y_true": 5, "y_pred": [5]}, r"y_true has shape \[\], y_pred \[1\]"),
    ],
)
def test_malformed_eval_results_are_invalid_input_not_a_crash(sqlite_reg, artifact, results, match):
    # These raised TypeError / ValueError / IndexError from numpy and len() (an internal error, not a message).
    with pytest.raises(InvalidInput, match=match):
        sqlite_reg.register("m", artifact("a"), eval_results=results, actor="ana")
    assert _nothing_registered(sqlite_reg, "m")


def _two_close_versions(reg, artifact):
    # 52 vs 48 right out of 100, 4 discordant pairs all for A: no real difference (exact McNemar p = 0.125).
    reg.register("m", artifact("a"), metrics={"acc": 0.52}, eval_results={"correct": [True] * 52 + [False] * 48})
    reg.register("m", artifact("b"), metrics={"acc": 0.48}, eval_results={"correct": [True] * 48 + [False] * 52})


@pytest.mark.parametrize("alpha", [5, 1.0, 0, -0.05, float("nan"), "0.05", True])
def test_alpha_outside_zero_one_is_refused(sqlite_reg, artifact, alpha):
    _two_close_versions(sqlite_reg, artifact)
    # alpha=5 (meant as 5 %) used to crown m:1.0.0 the significant winner at p = 0.125.
    with pytest.raises(InvalidInput, match="alpha must be a significance level between 0 and 1"):
        sqlite_reg.compare(["m:1.0.0", "m:1.0.1"], "acc", alpha=alpha)


def test_a_valid_alpha_still_reports_no_winner_for_a_small_difference(sqlite_reg, artifact):
    _two_close_versions(sqlite_reg, artifact)
    res = sqlite_reg.compare(["m:1.0.0", "m:1.0.1"], "acc", alpha=0.05)
    assert res["winner"] is None and res["significant"] is False
    from scipy import stats

    assert res["p_value"] == pytest.approx(stats.binomtest(4, 4, 0.5).pvalue)  # 2 * 0.5**4


def test_higher_is_better_must_be_a_boolean(sqlite_reg, artifact):
    sqlite_reg.register("m", artifact("a"), metrics={"loss": 0.2})
    sqlite_reg.register("m", artifact("b"), metrics={"loss": 0.9})
    # The string "no" is truthy: the version with the HIGHER loss was named the winner.
    with pytest.raises(InvalidInput, match="higher_is_better must be True or False"):
        sqlite_reg.compare(["m:1.0.0", "m:1.0.1"], "loss", higher_is_better="no")
    assert sqlite_reg.compare(["m:1.0.0", "m:1.0.1"], "loss", higher_is_better=False)["winner"] == "m:1.0.0"


def test_cli_compare_refuses_alpha_above_one_with_exit_2(sqlite_reg, artifact, fastml_home, capsys):
    _two_close_versions(sqlite_reg, artifact)
    url = f"sqlite:///{fastml_home / 'registry.db'}"
    rc = main(["registry", "--url", url, "compare", "m:1.0.0", "m:1.0.1", "--metric", "acc", "--alpha", "5"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "alpha must be a significance level" in err and "Traceback" not in err


def test_cli_alias_delete_with_json_prints_json(sqlite_reg, artifact, fastml_home, capsys):
    sqlite_reg.register("m", artifact("a"))
    url = f"sqlite:///{fastml_home / 'registry.db'}"
    assert main(["registry", "--url", url, "alias", "m", "champion", "1.0.0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["aliases"] == ["champion"]
    assert main(["registry", "--url", url, "alias", "m", "champion", "--delete", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"name": "m", "alias": "champion", "deleted": True}
    assert sqlite_reg.resolve("m:1.0.0").aliases == []


def test_a_version_too_long_for_the_database_is_invalid_input(reg, artifact):
    # 70 numeric pre-release identifiers: 145 characters of text, but a sort key of over 1000 bytes, past the
    # 200-character column (PostgreSQL raised a DataError; SQLite stored it). Refused before anything is stored.
    long_pre = "1.0.0-" + ".".join(["1"] * 70)
    with pytest.raises(InvalidInput, match="too long"):
        reg.register("m", artifact("a"), version=long_pre, actor="ana")
    with pytest.raises(InvalidInput, match="too long"):
        reg.register("m", artifact("a"), version="1.0.0-" + "a" * 250, actor="ana")
    assert _nothing_registered(reg, "m")
    assert reg.register("m", artifact("a"), version="1.0.0-rc.1", actor="ana").version == "1.0.0-rc.1"


def test_an_actor_name_too_long_for_the_database_is_invalid_input(reg, artifact):
    with pytest.raises(InvalidInput, match="actor"):
        reg.register("m", artifact("a"), actor="x" * 300)
    assert _nothing_registered(reg, "m")
    reg.register("m", artifact("a"), actor="ana")
    rid = reg.request_transition("m:1.0.0", "production", actor="ana")
    with pytest.raises(InvalidInput, match="actor"):
        reg.approve(rid, reviewer="b" * 129)
    assert reg.get_request(rid)["decisions"] == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        # A misspelt exclusive stage left "production" non-exclusive: two production versions at once.
        ({"exclusive": ["prod"]}, "exclusive stage 'prod' is not one of the stages.*did you mean 'production'"),
        # A bare string was iterated character by character.
        ({"exclusive": "production"}, "exclusive must be a list of stage names, not the string 'production'"),
        ({"stages": "abc"}, "stages must be a list of stage names, not the string 'abc'"),
        ({"protected": "production"}, "protected must be a dict .* or a list of stage names, not the string"),
    ],
)
def test_misconfigured_stages_are_refused(fastml_home, kwargs, match):
    from fastml.registry import Registry

    with pytest.raises(InvalidInput, match=match):
        Registry(f"sqlite:///{fastml_home / 'registry.db'}", **kwargs)


def test_a_stage_configured_exclusive_holds_one_version(fastml_home, artifact):
    from fastml.registry import Registry

    reg = Registry(f"sqlite:///{fastml_home / 'registry.db'}", exclusive=["staging", "production"])
    try:
        reg.register("m", artifact("a"))
        reg.register("m", artifact("b"))
        reg.transition("m:1.0.0", "staging")
        reg.transition("m:1.0.1", "staging")
        assert [(mv.version, mv.stage) for mv in reg.list_versions("m")] == [
            ("1.0.0", "archived"),
            ("1.0.1", "staging"),
        ]
    finally:
        reg.close()


def test_history_at_a_basic_format_date_means_the_end_of_that_day(reg, artifact):
    reg.register("m", artifact("a"), actor="ana")
    rid = reg.request_transition("m:1.0.0", "production", actor="ana")
    reg.approve(rid, reviewer="bo")
    reg.approve(rid, reviewer="cy")
    day = reg.events()[-1]["at"][:10]  # the UTC day of the promotion, "YYYY-MM-DD"
    extended = reg.history("m", at=day)
    # "20261129" is the same day as "2026-11-29"; it was read as that day's midnight, before everything.
    basic = reg.history("m", at=day.replace("-", ""))
    assert extended["stages"]["production"] == ["1.0.0"]
    assert basic["stages"]["production"] == ["1.0.0"]
    assert basic["at"] == extended["at"] == f"{day}T23:59:59.999999Z"
    assert len(basic["events"]) == len(reg.events())
