"""What a parallel scan of :mod:`landscope.geometry.scan` ships to its worker processes: the
scan pickled once (cloudpickle), its data as numpy arrays."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from torch import Tensor

from landscope.geometry.space import ParamSpace
from landscope.probes.probe_data import ProbeData

if TYPE_CHECKING:
    from landscope.geometry.scan import Scan


def _cloudpickle() -> Any:
    """Cloudpickle (a joblib dependency; older joblib versions vendor it): pickles models whose
    classes live in ``__main__`` by value."""
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - joblib < 1.3
        from joblib.externals import cloudpickle  # type: ignore[no-redef]
    return cloudpickle


def _portable(data: Optional[ProbeData]) -> Any:
    """ProbeData as numpy arrays: a numpy view pickles only the samples its batch holds (a
    tensor slice would pickle its whole storage). Dtypes numpy lacks stay tensors (copied)."""
    if data is None:
        return None

    def one(t: Tensor) -> Any:
        t = t.detach().cpu()
        try:
            return t.numpy()
        except TypeError:  # e.g. bfloat16
            return t.clone()
    return [(one(x), one(y)) for x, y in data.batches]


def _unportable(batches: Any) -> Optional[ProbeData]:
    if batches is None:
        return None

    def one(a: Any) -> Tensor:
        return torch.from_numpy(a).clone() if isinstance(a, np.ndarray) else a
    return ProbeData([(one(x), one(y)) for x, y in batches])


def _scan_payload(space: ParamSpace, scan: Scan, chunks: list[np.ndarray]) -> bytes:
    """The pickled scan the workers read (the space's pickle keyed by its hash)."""
    pickler = _cloudpickle()
    space_blob = pickler.dumps(space)
    return pickler.dumps({
        "space": space_blob, "space_key": hashlib.blake2b(space_blob, digest_size=16).digest(),
        "kind": scan.kind, "dirs": scan.dirs.cpu(), "terms": scan.terms,
        "axes": scan.axes, "sets": [_portable(s) for s in scan.sets], "bn": scan.bn,
        "bn_data": _portable(scan.bn_data), "chunks": chunks})
