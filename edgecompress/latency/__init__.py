"""Latency: statistics over timed runs, the measurement cache, per-op tables, predictors.

Import submodules directly (`from edgecompress.latency.stats import summarize`); this
package file stays empty so importing one part never pulls in another.
"""
