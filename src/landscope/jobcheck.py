"""What a job directory holds, read without writing: its result, whose job it is, what of a
finished job is missing.

- :func:`read_result`: ``result.json`` when it is well-formed, else None (a file without a
  fingerprint, a status or, for a finished job, its final metrics is as good as absent: the
  job reruns from its checkpoints).
- :func:`finished_training`: the result of a training that finished, also when a stage after
  it failed.
- :func:`conflict_reason`: the one line that refuses a config whose job directory holds
  another job (decided from result.json, else the newest valid checkpoint, else
  config.yaml), before anything is written.
- :func:`metrics_intact`: whether ``metrics.jsonl`` has exactly the finished epochs' rows.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Optional

from landscope.checkpoint import newest_valid
from landscope.errors import LandscopeError
from landscope.io import read_json

log = logging.getLogger("landscope")

FINISHED = ("completed", "diverged")
STATUSES = (*FINISHED, "failed")
# a failed result's field: the training's own result, when the training finished and a stage
# after it (the probes, the landscape) failed; read through finished_training
TRAINED = "trained"


def result_defect(result: object) -> Optional[str]:
    """Why a parsed result.json cannot be used (None when it can)."""
    if not isinstance(result, dict):
        return f"not a JSON object but {type(result).__name__}"
    if result.get("status") not in STATUSES:
        return f"unknown status {result.get('status')!r}"
    if not isinstance(result.get("fingerprint"), str):
        return "no config fingerprint"
    if result["status"] in FINISHED:
        if not isinstance(result.get("epochs_completed"), int) or \
                not isinstance(result.get("final"), dict):
            return "no final metrics"
    return None


def finished_training(result: dict) -> Optional[dict]:
    """The result of the job's finished training: ``result`` itself when it is finished,
    the training's own result kept in a failed one whose stages after training failed (so
    that ``runner.probe`` and a sibling job can use the trained model), else None."""
    if result.get("status") in FINISHED:
        return result
    trained = result.get(TRAINED)
    if result.get("status") != "failed" or result_defect(trained) is not None:
        return None
    same = trained.get("fingerprint") == result.get("fingerprint")
    return trained if same and trained["status"] in FINISHED else None


def read_result(path: Path, warn: bool = True) -> Optional[dict]:
    """A job's result.json, or None when absent, unreadable or malformed (then the job
    reruns from its newest valid checkpoint, which costs nothing when that is the last)."""
    path = Path(path)
    try:
        result = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        if warn:
            log.warning("warning: ignoring unreadable %s (%s)", path, " ".join(str(exc).split()))
        return None
    defect = result_defect(result)
    if defect is not None:
        if warn:
            log.warning("warning: ignoring %s (%s)", path, defect)
        return None
    return result


def saved_config_fingerprint(job_dir: Path, fingerprint: Callable) -> Optional[str]:
    """Fingerprint of the config recorded in ``job_dir/config.yaml`` (read on the current
    schema, so fields added since keep their defaults, and options renamed since under their
    current names), or None when it is absent or unreadable."""
    from omegaconf import OmegaConf

    from landscope.config import Config
    from landscope.config.renames import to_current

    path = Path(job_dir) / "config.yaml"
    if not path.is_file():
        return None
    try:
        saved = OmegaConf.load(path)
    except Exception:  # noqa: BLE001 - unreadable leftovers mean "no job"
        return None
    if not isinstance(saved, type(OmegaConf.create({}))) or len(saved) == 0:
        return None
    try:  # options renamed since the job was written are read under their current names
        current = OmegaConf.create(to_current(OmegaConf.to_container(saved, resolve=False)))
        return fingerprint(OmegaConf.merge(OmegaConf.structured(Config), current))
    except Exception:  # noqa: BLE001 - keys or values the schema refuses: compare as written
        try:
            return fingerprint(saved)
        except Exception:  # noqa: BLE001
            return None


def conflict_reason(job_dir: Path, fp: str, fingerprint: Callable,
                    legacy: Optional[str] = None, earlier: Optional[str] = None
                    ) -> Optional[str]:
    """The one-line refusal when ``job_dir`` holds a job of another config than ``fp``;
    None when it is absent, empty, holds this job (a record written before fingerprint
    version 2 may carry ``legacy``, the config's version-1 fingerprint; one written before
    the optimizer's and the model's options were marked, ``earlier``), or only unreadable
    leftovers."""
    from landscope.fingerprints import FINGERPRINT_VERSION, same_config

    job_dir = Path(job_dir)
    if not job_dir.is_dir():
        return None
    result = read_result(job_dir / "result.json", warn=False)
    if result is not None:
        record, source = result, "result.json"
    else:
        found = newest_valid(job_dir / "checkpoints")
        if found is not None:
            record, source = found[1], f"checkpoint {found[0].name}"
        else:
            saved = saved_config_fingerprint(job_dir, fingerprint)
            if saved is None:
                return None
            record = {"fingerprint": saved, "fingerprint_version": FINGERPRINT_VERSION}
            source = "config.yaml"
    if same_config(record, fp, legacy, earlier):
        return None
    other = record.get("fingerprint")
    return (f"{job_dir} holds a job with a different config ({source} has fingerprint {other}, "
            f"this config {fp}); nothing was changed there: the command that made it still "
            "resumes it, and this config needs another hydra.sweep.dir, hydra.run.dir or name")


def metrics_intact(job_dir: Path, epochs: int) -> bool:
    """Whether ``metrics.jsonl`` parses line by line (no partial last line) and holds
    exactly ``epochs`` rows, numbered 1..epochs."""
    path = Path(job_dir) / "metrics.jsonl"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if text and not text.endswith("\n"):
        return False
    try:
        rows = [json.loads(line) for line in text.splitlines() if line]
    except ValueError:
        return False
    return all(isinstance(r, dict) for r in rows) and \
        [r.get("epoch") for r in rows] == list(range(1, epochs + 1))


class JobRefused(LandscopeError):
    """The job directory holds another config's job; decided before anything was written."""
