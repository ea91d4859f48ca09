"""Edge cases of the registry and converter commands: reserved alias names, request statuses, files that
are not UTF-8 text or do not exist, and ``fastml convert`` inputs that used to end in a traceback."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from fastml.cli import main
from fastml.errors import InvalidInput


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("name", ["production", "development", "latest"])
def test_deleting_a_stage_or_latest_as_an_alias_is_refused_and_logs_nothing(reg, artifact, name):
    reg.register("churn", artifact("a"), actor="ana")
    before = reg.events()
    with pytest.raises(InvalidInput) as exc:
        reg.delete_alias("churn", name, actor="ana")
    assert str(exc.value) == (
        f"alias {name!r} is reserved (stages ['development', 'staging', 'production', 'archived'] and 'latest' "
        "are not aliases)"
    )
    assert reg.events() == before  # the append-only log holds no "alias deleted" event that never happened
    assert reg.resolve("churn@latest").version == "1.0.0"


def test_list_requests_refuses_an_unknown_status(sqlite_reg, artifact):
    sqlite_reg.register("churn", artifact("a"), actor="ana")
    rid = sqlite_reg.request_transition("churn:1.0.0", "production", actor="ana")
    with pytest.raises(InvalidInput) as exc:
        sqlite_reg.list_requests(status="opne")
    assert str(exc.value) == "unknown request status 'opne'; statuses: ['open', 'approved', 'rejected', 'stale']"
    assert [r["id"] for r in sqlite_reg.list_requests(status="open")] == [rid]


def test_cli_json_option_files_that_are_not_utf8_are_one_line_errors(capsys, fastml_home, artifact, tmp_path):
    binary = tmp_path / "card.bin"
    binary.write_bytes(b"\x80\xc9 not text")
    for flag in ("--model-card", "--signature", "--eval-results"):
        rc, out, err = _run(capsys, "registry", "register", "churn", str(artifact("a")), flag, str(binary))
        assert rc == 2 and out == ""
        assert err == (
            f"fastml: error: InvalidInput: {flag} {str(binary)!r}: 'utf-8' codec can't decode byte 0x80 in "
            "position 0: invalid start byte\n"
        )
    rc, out, _ = _run(capsys, "registry", "list", "--json")
    assert (rc, out) == (0, "[]\n")  # nothing was registered


def test_cli_signers_file_missing_or_binary_is_a_one_line_error(capsys, fastml_home, tmp_path):
    missing = tmp_path / "nope.txt"
    rc, _, err = _run(capsys, "registry", "signers", str(missing))
    assert rc == 2
    assert err == (
        f"fastml: error: InvalidInput: allowed signers file {str(missing)!r}: [Errno 2] No such file or directory: "
        f"{str(missing)!r}\n"
    )
    binary = tmp_path / "keys.bin"
    binary.write_bytes(b"\xff\xfe")
    rc, _, err = _run(capsys, "registry", "signers", str(binary))
    assert rc == 2
    assert err == (
        f"fastml: error: InvalidInput: allowed signers file {str(binary)!r}: 'utf-8' codec can't decode byte 0xff "
        "in position 0: invalid start byte\n"
    )


@pytest.fixture
def sklearn_pickle(tmp_path):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.random((40, 4)).astype(np.float32)
    path = tmp_path / "lr.pkl"
    path.write_bytes(pickle.dumps(LogisticRegression().fit(x, (x[:, 0] > 0.5).astype(int))))
    return path


def test_convert_sample_of_the_wrong_shape_or_file_is_a_one_line_error(capsys, fastml_home, sklearn_pickle, tmp_path):
    out_file = tmp_path / "out.onnx"
    narrow, flat, text = tmp_path / "narrow.npy", tmp_path / "flat.npy", tmp_path / "rows.txt"
    np.save(narrow, np.zeros((5, 3), np.float32))
    np.save(flat, np.zeros(4, np.float32))
    text.write_text("1,2,3,4\n")
    missing = tmp_path / "missing.npy"
    cases = {
        narrow: "sample rows must be a non-empty [rows, 4] array; got shape [5, 3]",
        flat: "sample rows must be a non-empty [rows, 4] array; got shape [4]",
        missing: f"sample {str(missing)!r} is not a readable .npy array: [Errno 2] No such file or directory: "
        f"{str(missing)!r}",
    }
    for sample, message in cases.items():
        rc, out, err = _run(capsys, "convert", str(sklearn_pickle), "-o", str(out_file), "--sample", str(sample))
        assert (rc, out, err) == (2, "", f"fastml: error: InvalidInput: {message}\n")
    rc, _, err = _run(capsys, "convert", str(sklearn_pickle), "-o", str(out_file), "--sample", str(text))
    assert rc == 2 and err.startswith(f"fastml: error: InvalidInput: sample {str(text)!r} is not a readable .npy array")
    assert not out_file.exists()


def test_convert_to_a_directory_or_with_a_negative_tolerance_is_refused(capsys, fastml_home, sklearn_pickle, tmp_path):
    target = tmp_path / "models"
    target.mkdir()
    rc, _, err = _run(capsys, "convert", str(sklearn_pickle), "-o", str(target))
    assert (rc, err) == (
        2,
        f"fastml: error: InvalidInput: output {str(target)!r} is a directory; give the ONNX file to write\n",
    )
    assert list(target.iterdir()) == []  # no temporary left beside it either
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    rc, _, err = _run(capsys, "convert", str(sklearn_pickle), "-o", str(tmp_path / "m.onnx"), "--atol", "-1")
    assert (rc, err) == (
        2,
        "fastml: error: InvalidInput: parity tolerance atol must be a finite number >= 0; got -1.0\n",
    )
    assert not (tmp_path / "m.onnx").exists()
