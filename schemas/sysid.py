"""System identification: TrialResponses, Dataset, configs, TrainedModel, Score."""

import datajoint as dj

schema = dj.Schema()
