"""One module per stage a Make target runs (except build: pipeline/backends/, and tune/analyze: pipeline/tuning/)."""
