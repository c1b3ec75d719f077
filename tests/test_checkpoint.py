"""Atomic, checksummed checkpoints and RNG state."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from landscope.checkpoint import (
    capture_rng,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    restore_rng,
    save_checkpoint,
)
from landscope.errors import CheckpointError


def state(epoch: int) -> dict:
    return {"epoch": epoch, "w": torch.arange(10.0) * epoch, "history": [{"a": 1.0}],
            "rng": capture_rng()}


def test_round_trip_and_pruning(tmp_path):
    for e in range(1, 5):
        save_checkpoint(tmp_path, e, state(e), keep=2)
    files = list_checkpoints(tmp_path)
    assert [p.name for p in files] == ["epoch_000004.pt", "epoch_000003.pt"]
    loaded = load_checkpoint(files[0])
    assert loaded["epoch"] == 4 and torch.equal(loaded["w"], torch.arange(10.0) * 4)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_damaged_checkpoint_is_one_line_error(tmp_path, damage):
    path = save_checkpoint(tmp_path, 1, state(1))
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        path.write_bytes(raw[:-100] + bytes([raw[-100] ^ 0xFF]) + raw[-99:])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"PK\x03\x04 not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_load_latest_falls_back_to_previous(tmp_path):
    save_checkpoint(tmp_path, 1, state(1))
    newest = save_checkpoint(tmp_path, 2, state(2))
    newest.write_bytes(newest.read_bytes()[:50])
    warnings = []
    loaded = load_latest(tmp_path, warn=warnings.append)
    assert loaded["epoch"] == 1
    assert len(warnings) == 1 and ("corrupted" in warnings[0] or "truncated" in warnings[0])
    assert (tmp_path / "epoch_000002.pt.corrupt").exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch_000001.pt"]


def test_load_latest_none_when_all_bad(tmp_path):
    p = save_checkpoint(tmp_path, 1, state(1))
    p.write_bytes(b"x")
    assert load_latest(tmp_path) is None
    assert load_latest(tmp_path / "missing") is None


def test_rng_state_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint(tmp_path, 1, {"epoch": 1, "rng": capture_rng()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng(load_checkpoint(tmp_path / "epoch_000001.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
