"""Two-photon scans to cell traces: Scan, ScanInfo, MotionCorrection, Denoised, Segmentation, Traces."""

import datajoint as dj

schema = dj.Schema()
