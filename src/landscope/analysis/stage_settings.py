"""The probe and landscape settings behind a job's measures, and one setting per trained model.

- **What was measured with what.** A job's ``config.yaml`` holds the probe and landscape
  settings it was started with; ``runner.probe JOB probe=full`` (or ``runner.landscape``)
  measures it again later, and ``result.json`` then holds that run's scalars while
  ``config.yaml`` is left as it was. The settings that produced the scalars are in the cache
  record ``result.json`` names (``probes/<probe_fingerprint>.json``'s ``probe``,
  ``landscape/<landscape_fingerprint>.json``'s ``landscape``): :func:`measurements` reads
  them, and :func:`measured_with` names the options where they differ from ``config.yaml``
  (the table's ``measured_with`` column). The table's ``config.probe.*`` columns stay
  ``config.yaml``'s: they also describe what ran during training (``probe.every_n_steps``, its
  ``probe.data_size``), which the edge-of-stability section reads.
- **One setting per trained model.** A sweep over probe or landscape settings
  (``probe.data_size=500,1000``) trains each model once per setting, in its own directory.
  Pooled, those directories would count the model twice and mix two estimators in one test.
  A job measured again by ``runner.probe`` keeps the earlier probe results beside the new
  (``probes_by_fingerprint``; :func:`measurements`). :func:`mark_other_settings` chooses one
  setting for every model (the one most models were measured with, in any directory or
  preset, or the one ``runner.report --setting`` names, :func:`parse_settings`), keeps one
  job per model and gives the other jobs the status ``other_setting``; :func:`use_presets`
  reads a kept job with its preset at that setting. :func:`setting_notes` says which setting
  was analysed, which jobs were read with a preset other than the one result.json shows, and
  whether the analysed jobs were still measured with different settings (pooled in every
  test).
- **Scalars older than the multiplicity check.** :func:`leave_out_unchecked` leaves out the
  scalars of a top-k's later entries (``lambda_2``, ``spectral_gap``, ...) where the analysed
  probe results predate the check for missed copies of repeated eigenvalues
  (:mod:`landscope.probes.checked`), and says so.

Torch-free, like :mod:`landscope.analysis.collect`.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from landscope.analysis.effective import (
    STAGE_COLUMNS,
    column,
    flat_defaults,
    flatten,
    meant_columns,
    scalar,
)

OTHER_SETTING = "other_setting"  # status of a trained model's job at a setting not analysed

# Options of the probe group read during training (metrics.jsonl), not by the final probes
TRAINING_TIME = ("config.probe.every_n_epochs", "config.probe.every_n_steps")

# result.json's fingerprint field and the cache directory of each stage's records
RECORDS = {"probe": ("probe_fingerprint", "probes"),
           "landscape": ("landscape_fingerprint", "landscape")}


def stage_setting(columns: dict[str, Any]) -> dict[str, Any]:
    """The probe and landscape settings in ``columns`` (the ``config.probe.*`` and
    ``config.landscape.*`` ones, missing ones at their defaults; options that change no result
    and :data:`TRAINING_TIME` left out)."""
    return {k: v for k, v in meant_columns(columns).items()
            if k.startswith(STAGE_COLUMNS) and k not in TRAINING_TIME}


def _recorded(job: Any, group: str, fp: Any) -> dict[str, Any]:
    """The stage columns of the config group recorded in ``group``'s cache record ``fp``
    (empty when there is none, or it is unreadable)."""
    record = job.cache(RECORDS[group][1], fp).read(npz="none") \
        if isinstance(fp, str) and fp else None
    conf = record.get(group) if isinstance(record, dict) else None
    if not isinstance(conf, dict):
        return {}
    return {column(f"{group}.{k}"): v for k, v in flatten(conf).items()}


def measurements(job: Any, result: dict) -> list[tuple[dict[str, Any], dict | None]]:
    """``(measured columns, probe scalars)`` of each measurement a job holds (``job``: a
    :class:`~landscope.jobdir.JobDir`, ``result``: its result.json): the stage columns of the
    config groups recorded with the scalars ``result`` shows, read from the cache records it
    names (a group without a readable record left out; scalars: result.json's ``probes``, None
    when it has none); then one
    for each probe preset ``result`` keeps beside them (``probes_by_fingerprint``;
    ``runner.probe`` with other settings adds one) whose settings are recorded."""
    landscape = _recorded(job, "landscape", result.get("landscape_fingerprint"))
    top = result.get("probe_fingerprint")
    own = result.get("probes")
    out: list[tuple[dict[str, Any], dict | None]] = [
        ({**landscape, **_recorded(job, "probe", top)}, own if isinstance(own, dict) else None)]
    by = result.get("probes_by_fingerprint")
    for fp, scalars in (by.items() if isinstance(by, dict) else ()):
        probe = _recorded(job, "probe", fp) if fp != top and isinstance(scalars, dict) else {}
        if probe:
            out.append(({**landscape, **probe}, scalars))
    return out


def measured_with(started: dict[str, Any], ran: dict[str, Any]) -> str | None:
    """The options, as overrides, whose value in ``ran`` (:func:`stage_setting` of what was
    measured) differs from ``started`` (of config.yaml); None when none does."""
    said = [f"{k[len('config.'):]}={_compact(v)}" for k, v in ran.items()
            if not _same(v, started.get(k))]
    return " ".join(said) or None


def _compact(value: Any) -> str:
    """:func:`_text` without spaces in lists (``[0.01,0.05]``, as an override is written)."""
    text = _text(value)
    if text.startswith(("[", "{")):
        try:
            return json.dumps(json.loads(text), separators=(",", ":"))
        except ValueError:
            pass
    return text


def measured_column(jobs: pd.DataFrame, name: str) -> pd.Series:
    """The ``config.probe.*`` or ``config.landscape.*`` column ``name`` of ``jobs`` as the
    measures were taken: ``measured_with``'s value where it names the option, else the
    column's (config.yaml's)."""
    import yaml

    key = name[len("config."):] + "="
    out = jobs[name].copy() if name in jobs else pd.Series(None, index=jobs.index, dtype=object)
    for row, said in jobs.get("measured_with", pd.Series(dtype=object)).items():
        for item in str(said).split(" ") if isinstance(said, str) else ():
            if item.startswith(key):
                out.loc[row] = scalar(yaml.safe_load(item[len(key):]))
    return out


def _text(value: Any) -> str:
    """A cell as the command line writes it (``400``, ``true``, ``null``, ``[0.01, 0.05]``)."""
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    return value if isinstance(value, str) else json.dumps(value)


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None or isinstance(a, bool) or isinstance(b, bool):
        return a == b
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``["probe.data_size=400"]`` → ``{"config.probe.data_size": 400}`` (values read as YAML,
    as Hydra reads overrides); a LandscopeError names an item that is not ``KEY=VALUE`` of a
    probe or landscape option of the schema."""
    import difflib

    import yaml

    from landscope.errors import LandscopeError

    out: dict[str, Any] = {}
    known = [k for k in flat_defaults() if k.startswith(STAGE_COLUMNS)]
    for item in items:
        key, sep, value = (part.strip() for part in item.partition("="))
        col = key if key.startswith("config.") else column(key)
        if not sep or not key or not col.startswith(STAGE_COLUMNS):
            raise LandscopeError(f"--setting {item}: expected KEY=VALUE of a probe.* or "
                                 "landscape.* option, e.g. --setting probe.data_size=400")
        if col not in known:
            close = difflib.get_close_matches(col, known, n=1)
            hint = f" (did you mean {close[0][len('config.'):]}?)" if close else ""
            raise LandscopeError(f"--setting {item}: no option {key}{hint}")
        out[col] = scalar(yaml.safe_load(value)) if value else None
    return out


def _no_match(prefer: dict[str, Any], settings: list[dict[str, Any]]) -> str:
    for key, value in prefer.items():
        seen = sorted({_text(s.get(key)) for s in settings})
        if not any(_same(s.get(key), value) for s in settings):
            return (f"--setting {key[len('config.'):]}={_text(value)}: no completed job ran "
                    f"it (the jobs ran {', '.join(seen)})")
    return ("--setting " + " ".join(f"{k[len('config.'):]}={_text(v)}" for k, v in prefer.items())
            + ": no completed job ran all of these together")


def mark_other_settings(jobs: pd.DataFrame, trained: list[Any], settings: list[list[dict]],
                        prefer: dict[str, Any] | None = None,
                        measured: list[tuple[dict, list]] | None = None) -> list[int]:
    """In place: of the included jobs that are one trained model (equal ``trained``
    identities, :func:`~landscope.analysis.effective.identity` without the probe and
    landscape columns), one stays included and the others get status :data:`OTHER_SETTING`.
    ``settings`` per row: the settings of each measurement the job holds (:func:`stage_setting`
    of what was measured; its result.json's own first, then the other presets it keeps,
    :func:`measurements`). One setting is analysed for every model: the one most models were
    measured with, among those that match ``prefer`` (:func:`parse_settings`); on a tie the
    one more of them were measured with after the multiplicity check (``measured`` per row:
    ``(started, [(ran, scalars), ...])`` of :func:`measurements`, aligned with ``settings``;
    :func:`leave_out_unchecked` blanks an older measurement's list scalars), then the first
    collected. A model without a measurement at that setting keeps its first (matching) job,
    as measured. Returns per row the index of the measurement to analyse (0: the job's own);
    raises a LandscopeError when no included job matches ``prefer``."""
    from landscope.errors import LandscopeError
    from landscope.probes.checked import predates_multiplicity_check

    rows = [i for i, ok in enumerate(jobs["included"].tolist()) if ok and trained[i] is not None]
    key = {(i, j): json.dumps(sorted(s.items()), default=str)
           for i in rows for j, s in enumerate(settings[i])}
    matching = [o for o in key if all(_same(settings[o[0]][o[1]].get(k), v)
                                      for k, v in (prefer or {}).items())]
    if prefer and not matching:
        raise LandscopeError(_no_match(prefer, [settings[i][j] for i, j in key]))
    matched, models, checked = set(matching), {}, {}
    for i, j in matching:
        models.setdefault(key[i, j], set()).add(trained[i])
        if measured is None or not predates_multiplicity_check(measured[i][1][j][1]):
            checked.setdefault(key[i, j], set()).add(trained[i])
    chosen = max(models, key=lambda k: (len(models[k]), len(checked.get(k, ())))) \
        if models else None
    groups: dict[Any, list[int]] = {}
    for i in rows:
        groups.setdefault(trained[i], []).append(i)
    pick = [0] * len(settings)
    for group in groups.values():
        options = [(i, j) for i in group for j in range(len(settings[i]))]
        keep = next((o for o in options if key[o] == chosen),
                    next((o for o in options if o in matched), (group[0], 0)))
        pick[keep[0]] = keep[1]
        kept = jobs.iloc[keep[0]]
        for i in (i for i in group if i != keep[0]):
            row = jobs.index[i]
            jobs.loc[row, ["status", "included"]] = [OTHER_SETTING, False]
            jobs.loc[row, "reason"] = _setting_reason(
                f"{kept['sweep']}/{kept['job']}", settings[i][0], settings[keep[0]][keep[1]])
    return pick


def use_presets(jobs: pd.DataFrame, pick: list[int],
                measurements: list[tuple[dict, list[tuple[dict, Any]]]]) -> list[str]:
    """In place: each row whose ``pick`` (:func:`mark_other_settings`) is another probe preset
    the job keeps gets that preset's scalars as its ``probe.*`` columns, and its
    ``measured_with`` what the preset was measured with (``measurements`` per row: the
    settings of config.yaml and the ``(settings measured with, scalars)`` of each
    measurement, :func:`stage_setting` both). Then :func:`leave_out_unchecked` on the scalars
    picked; returns its sentences."""
    for i, j in enumerate(pick):
        if not j:
            continue
        started, options = measurements[i]
        ran, scalars = options[j]
        row, shown = jobs.index[i], [c for c in jobs.columns if c.startswith("probe.")]
        for name in shown:  # able to hold a gap (once per column)
            if pd.api.types.is_integer_dtype(jobs[name]) or pd.api.types.is_bool_dtype(jobs[name]):
                _put(jobs, row, name, None)
        jobs.loc[row, shown] = None
        for key, value in scalars.items():
            _put(jobs, row, f"probe.{key}", scalar(value))
        _put(jobs, row, "measured_with", measured_with(started, ran))
    return leave_out_unchecked(jobs, [m[1][j][1] for m, j in zip(measurements, pick)])


def _put(jobs: pd.DataFrame, row: Any, name: str, value: Any) -> None:
    """``jobs.loc[row, name] = value``, the column made able to hold it first (added when it
    is missing, float for a number or a gap in an integer column, else object)."""
    if name not in jobs.columns:
        jobs[name] = pd.Series(None, index=jobs.index, dtype=object)
    col = jobs[name]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if pd.api.types.is_integer_dtype(col) and (number or value is None):
        jobs[name] = col.astype(float)
    elif col.dtype != object and (pd.api.types.is_bool_dtype(col)
                                  or not (number or value is None)):
        jobs[name] = col.astype(object)
    jobs.loc[row, name] = value


def _differing(settings: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for s in settings for k in s})
    return [k for k in keys if len({_text(s.get(k)) for s in settings}) > 1]


def _setting_reason(kept: str, mine: dict[str, Any], theirs: dict[str, Any]) -> str:
    said = ", ".join(f"{k[len('config.'):]}={_text(mine.get(k))} where it has "
                     f"{_text(theirs.get(k))}" for k in _differing([mine, theirs]))
    return (f"the same trained model as {kept}, measured with other settings ({said}): a "
            "measure taken with other settings is another quantity and one model is one unit, "
            "so the analysis keeps one setting per model (runner.report --setting KEY=VALUE "
            "chooses it)")


def _values(settings: list[dict[str, Any]], key: str, counted: bool) -> str:
    """``key``'s values in ``settings``, the most frequent first (with their counts)."""
    counts = pd.Series([_text(s.get(key)) for s in settings]).value_counts()
    if not counted:
        return "/".join(counts.index)
    return ", ".join(f"{v} ({n} job{'s' if n != 1 else ''})" for v, n in counts.items())


def setting_notes(jobs: pd.DataFrame, settings: list[dict[str, Any]],
                  own: list[dict[str, Any]]) -> list[str]:
    """Sentences for the report: the setting :func:`mark_other_settings` kept, the jobs analysed
    with another preset than the one their result.json shows, and the settings the analysed
    jobs differ in (``settings`` per row of ``jobs``: what is analysed; ``own``: what
    result.json shows)."""
    status, included = jobs["status"].tolist(), jobs["included"].tolist()
    kept = [s for s, ok in zip(settings, included) if ok]
    notes = []
    other = [s for s, st in zip(settings, status) if st == OTHER_SETTING]
    if other:
        n = len(other)
        notes.append(
            f"{n} job{'s' if n != 1 else ''} measured a trained model already analysed with "
            f"other probe or landscape settings (status {OTHER_SETTING}); each model is "
            f"analysed once, at {_said(kept, _differing(kept + other))} (runner.report "
            "--setting KEY=VALUE chooses another).")
    swapped = [(s, o) for s, o, ok in zip(settings, own, included) if ok and s is not o]
    if swapped:
        n, shown = len(swapped), _differing([x for pair in swapped for x in pair])
        notes.append(
            f"{n} job{'s' if n != 1 else ''} {'were' if n != 1 else 'was'} measured again "
            "with other settings (runner.probe), and result.json shows the newer measures; "
            f"{'they are' if n != 1 else 'it is'} analysed with the probe results kept beside "
            f"them at {_said([s for s, _ in swapped], shown)}, as the other models are.")
    mixed = _differing(kept)
    if mixed:
        notes.append(
            "The analysed jobs' measures were taken with different probe or landscape "
            "settings, and every test pools them: "
            + "; ".join(f"{k[len('config.'):]} = {_values(kept, k, True)}" for k in mixed)
            + ". A measure taken with other settings is another estimator: measure the jobs "
            "alike (runner.probe or runner.landscape with one setting) to compare them.")
    return notes


def _said(settings: list[dict[str, Any]], keys: list[str]) -> str:
    return ", ".join(f"{k[len('config.'):]}={_values(settings, k, False)}" for k in keys)


def leave_out_unchecked(jobs: pd.DataFrame, analysed: list[dict | None]) -> list[str]:
    """In place: the included rows whose analysed probe scalars (``analysed`` per row: the
    preset :func:`mark_other_settings` picked, :func:`measurements`) predate the multiplicity
    check (:mod:`landscope.probes.checked`) lose the scalars that depend on their top-k's later
    entries (:data:`~landscope.probes.checked.TOP_LIST_SCALARS`: a missed copy of a repeated
    eigenvalue changes them); returns the report's sentence on them (empty when none)."""
    from landscope.probes.checked import (
        TOP_LIST_SCALARS,
        predates_multiplicity_check,
        top_list_predates_check,
    )

    stale, left_out = 0, set()
    for row, scalars, ok in zip(jobs.index, analysed, jobs["included"].tolist()):
        if not (ok and predates_multiplicity_check(scalars)):
            continue
        stale += 1
        if top_list_predates_check(scalars):
            for name in (s for s in TOP_LIST_SCALARS
                         if s in scalars and f"probe.{s}" in jobs.columns):
                _put(jobs, row, f"probe.{name}", None)
                left_out.add(name)
    if not stale:
        return []
    whose = "jobs'" if stale != 1 else "job's"
    out = (f"{stale} {whose} probe results predate the check "
           "for missed copies of repeated eigenvalues (December 2026), so an eigenvalue list of "
           "theirs may name a repeated eigenvalue once and reach further down the spectrum "
           "instead")
    if left_out:
        out += ("; the measures that depend on the top-k's entries after the first are left out "
                f"for them ({', '.join(s for s in TOP_LIST_SCALARS if s in left_out)}; "
                "lambda_max stands)")
    return [out + ". Running the sweep's command again (runner.probe, for results it added) "
            "measures them again, without retraining."]
