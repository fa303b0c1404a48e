"""Runs oasis-deconv (the peer tool) on traces from an .npz; executed with the peer's own Python.

Usage: python spikes_oasis_peer.py IN.npz OUT.npz. IN holds ``trace_<i>`` arrays (finite,
float64); OUT gets ``spikes_<i>`` and ``seconds_<i>`` (wall time of each deconvolution).
"""

import sys
import time

import numpy as np
from oasis.functions import deconvolve

data = np.load(sys.argv[1])
out = {}
for name in data.files:
    index = name.split("_", 1)[1]
    trace = data[name].astype(np.float64)
    start = time.perf_counter()
    # AR(1), parameters estimated from the trace, L1 penalty set by the noise constraint
    _c, spikes, _b, _g, _lam = deconvolve(trace, g=(None,), penalty=1)
    out[f"seconds_{index}"] = np.float64(time.perf_counter() - start)
    out[f"spikes_{index}"] = spikes
np.savez(sys.argv[2], **out)
