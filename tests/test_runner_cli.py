"""runner.cli.input_errors: bad input before any work is one `error:` line and exit 2."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from landscope.errors import ConfigError
from runner.cli import input_errors


def _exit_and_lines(capsys, raise_it, composing):
    with pytest.raises(SystemExit) as stop:
        with input_errors(composing=composing):
            raise_it()
    err = capsys.readouterr().err
    return stop.value.code, [ln for ln in err.splitlines() if ln.strip()]


def test_a_landscope_error_is_one_error_line_and_exit_2(capsys):
    def bad():
        raise ConfigError("probe.top_k must be >= 0 (got -1)")

    for composing in (False, True):
        code, lines = _exit_and_lines(capsys, bad, composing)
        assert code == 2 and lines == ["error: probe.top_k must be >= 0 (got -1)"]


def test_a_multi_line_composition_error_is_condensed_to_one_line(capsys):
    schema = OmegaConf.structured({"lr": 0.1})
    OmegaConf.set_struct(schema, True)

    def bad():
        OmegaConf.merge(schema, OmegaConf.from_dotlist(["lrr=0.2"]))  # a typo: several lines

    code, lines = _exit_and_lines(capsys, bad, composing=True)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "lrr" in lines[0]


def test_other_errors_propagate_unless_the_block_composes(capsys):
    with pytest.raises(ZeroDivisionError):
        with input_errors():
            _ = 1 / 0
    assert capsys.readouterr().err == ""
    with input_errors(composing=True):  # nothing raised: nothing printed, no exit
        pass
    assert capsys.readouterr().err == ""
