"""River model factories, learner/scorer split and model snapshots (issue 5)."""
