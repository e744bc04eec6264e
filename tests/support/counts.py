"""What a long test measured (kills by phase, takeover rounds), printed at the end of every run.

A test calls ``record_property(COUNTS, text)``; the root conftest prints every such line in a "counts" section,
for passed and failed tests alike. Captured output is shown only for failures, and user properties also reach
the controller from pytest-xdist workers.
"""

COUNTS = "counts"
