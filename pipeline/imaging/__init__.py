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


def _check_pmd(config: dict) -> None:
    """PMD's validation hook: positive sizes, and blocks that overlap less than their size."""
    identity.bounds(minimum={"block_size": 1, "overlap": 0, "max_rank": 1, "max_fails": 1, "noise_sims": 1})(config)
    if config["overlap"] >= config["block_size"]:
        raise ValueError(f"overlap = {config['overlap']} (expected < block_size = {config['block_size']})")


identity.register(
    "imaging",
    "rigid_phase_correlation",
    validate=identity.bounds(minimum={"template_frames": 1, "max_shift": 0.0, "upsample_factor": 1}),
)(motion.motion_correction)
identity.register("imaging", "pmd", validate=_check_pmd)(pmd.denoise)
identity.register(
    "imaging",
    "soma_correlation",
    validate=identity.bounds(
        minimum={"min_area": 0.0, "max_surround": 0.0, "max_cells": 0},
        above={"cell_radius": 0.0, "background_sigma": 0.0, "mask_threshold": 0.0, "max_area": 0.0},
        maximum={"min_correlation": 1.0, "mask_threshold": 1.0},
    ),
)(segmentation.segment)
identity.register(
    "imaging",
    "neuropil_dff",
    validate=identity.bounds(
        minimum={"neuropil_ratio": 0.0, "neuropil_inner": 0, "neuropil_outer": 1}, above={"baseline_window": 0.0}
    ),
)(traces.extract_traces)

# suite2p / CaImAn results as segmentation and trace builders (they register themselves)
from pipeline.imaging import imported  # noqa: E402, F401

DEFAULT_BUILDERS = {
    "motion": "rigid_phase_correlation",
    "pmd": "pmd",
    "segmentation": "soma_correlation",
    "traces": "neuropil_dff",
}
