"""Owns jobs: the journal, the queue and its limits, resume, dedupe, the budget, and the pipeline each job runs."""
