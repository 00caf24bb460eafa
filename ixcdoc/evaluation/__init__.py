"""Accuracy evaluation: the paper's document benchmarks, scored from their definitions.

``datasets`` reads each benchmark in its published format, ``metrics`` scores one answer,
``answering`` answers every question into resumable JSONL records, ``report`` turns records into
scores with confidence intervals. See docs/accuracy.md.
"""
