"""Spike inference: SpikeMethod, GroundTruth, SpikeModel, Activity."""

import datajoint as dj

schema = dj.Schema()
