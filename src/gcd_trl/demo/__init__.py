"""`make demo`: the paper's pipeline end to end on one CPU machine, offline (see `pipeline.py`)."""
