"""System identification of visual cortex: datasets, models, training, metrics.

- ``data``: the Sensorium FileTree format (read with validation, write/export) and the
  dataset builders (kind ``"dataset"``) that turn folders into dict-batch data loaders.
- ``models``: model builders (kind ``"model"``): cores, readouts, shifters, modulators.
- ``training``: trainer builders (kind ``"trainer"``).
- ``kshot``: the neural-process trainer and the K-shot curve of new neurons (kind ``"kshot"``).
- ``metrics``: single-trial correlation, correlation to average, FEVE.
"""
