"""The data layer: reading AnnData files, gene matching, value detection and checks, panel readers, the
per-cell shift statistics, and atomic writers. It imports nothing from the core or the steps.
"""
