"""Workers on many machines: the Worker heartbeat table."""

import datajoint as dj

schema = dj.Schema()
