"""Names checked by a pattern end where the string ends: Python's ``$`` also matches before a trailing newline,
so ``"churn\\n"`` was a valid model name (a second model beside ``churn``) and ``"trips\\n"`` a feature."""

from __future__ import annotations

import pytest

from fastml.errors import InvalidInput


def test_a_model_name_or_alias_with_a_trailing_newline_is_refused():
    from fastml.registry.refs import check_alias, check_name

    assert check_name("churn") == "churn" and check_alias("champion") == "champion"
    with pytest.raises(InvalidInput, match="invalid model name"):
        check_name("churn\n")
    with pytest.raises(InvalidInput, match="invalid alias"):
        check_alias("champion\n")


def test_a_feature_reference_with_a_trailing_newline_is_refused():
    from fastml.features.groups import parse_ref
    from fastml.registry.records import check_feature_refs

    assert parse_ref("driver:trips").feature == "trips"
    with pytest.raises(InvalidInput):
        parse_ref("driver:trips\n")
    with pytest.raises(InvalidInput, match="is not a feature reference"):
        check_feature_refs(["driver:trips\n"])


def test_a_deployment_name_with_a_trailing_newline_is_refused():
    from fastml.serving.deployment_config import parse

    text = '[deployments."d\\n"]\n[[deployments."d\\n".variants]]\nname = "a"\nmodel = "m"\nweight_bp = 10000\n'
    with pytest.raises(InvalidInput):
        parse(text)
    assert list(parse(text.replace("\\n", ""))) == ["d"]
