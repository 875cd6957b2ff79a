"""Reporting: the results store, tables, plots, docs/results.md, the run summary and the loggers."""
