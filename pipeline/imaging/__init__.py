"""The imaging chain on plain arrays: read scans, correct motion, denoise (PMD), find cells, extract traces.

Modules: ``io`` (readers), ``motion``, ``pmd``, ``segmentation``, ``traces``. Importing this
package registers the parameter-set builders of kind ``"imaging"`` (see ``pipeline.identity``)
that the imaging tables' parameter Lookup tables refer to.
"""
