"""Simulated data with known ground truth: natural images, model neurons, populations, experiments.

Modules (import the one you need; importing this package loads nothing heavy):

- ``stimuli``: natural images cut from scikit-image's bundled pictures (no download).
- ``neurons``: the ground-truth receptive-field model (Gabor simple / energy complex units).
- ``population``: a simulated population written as a Sensorium FileTree folder.
- ``experiment``: a simulated two-photon experiment (movie, cells, spikes) built on the above.
"""
