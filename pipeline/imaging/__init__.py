"""The imaging chain on plain arrays: read scans, correct motion, denoise (PMD), find cells, extract traces.

Modules: ``io`` (readers), ``scan`` (whole-scan steps over files), ``motion``, ``pmd``,
``segmentation``, ``traces``. Importing this package registers the parameter-set builders of
kind ``"imaging"`` (see ``pipeline.identity``) that the imaging tables' Lookup tables name:

- ``rigid_phase_correlation``: ``motion.motion_correction``
- ``pmd``: ``pmd.denoise``
- ``soma_correlation``: ``segmentation.segment``
- ``neuropil_dff``: ``traces.extract_traces``
- ``import_suite2p``, ``import_caiman``, ``import_traces``: ``imported`` (results of other tools)
"""

from pipeline import identity
from pipeline.imaging import motion, pmd, segmentation, traces

identity.register("imaging", "rigid_phase_correlation")(motion.motion_correction)
identity.register("imaging", "pmd")(pmd.denoise)
identity.register("imaging", "soma_correlation")(segmentation.segment)
identity.register("imaging", "neuropil_dff")(traces.extract_traces)

# suite2p / CaImAn results as segmentation and trace builders (they register themselves)
from pipeline.imaging import imported  # noqa: E402, F401

DEFAULT_BUILDERS = {
    "motion": "rigid_phase_correlation",
    "pmd": "pmd",
    "segmentation": "soma_correlation",
    "traces": "neuropil_dff",
}
