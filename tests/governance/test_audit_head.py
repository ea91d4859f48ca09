"""The audit log's HEAD overwritten with JSON that is not the anchor: reported, never a traceback."""

from __future__ import annotations

import pytest

from fastml.cli import main
from fastml.errors import IntegrityError
from fastml.governance.audit import AuditLog


@pytest.mark.parametrize("text, kind", [("5\n", "int"), ("[1, 2]\n", "list"), ('"x"\n', "str")])
def test_head_that_is_not_an_object_is_reported(fastml_home, capsys, text, kind):
    log = AuditLog()
    for i in range(3):
        log.append("registry.transition", target=f"m@{i}", actor="alice")
    log.head_path.write_text(text)
    problem = f"{log.head_path} is not a {{seq, hash}} object (holds {kind})"
    with pytest.raises(IntegrityError) as exc:
        log.head()
    assert str(exc.value) == problem
    result = log.verify()
    assert not result.ok and result.problem == problem
    assert main(["audit", "verify"]) == 1
    assert capsys.readouterr().err.startswith(f"audit log BROKEN at anchor: {problem}")
