"""Pictures and pages drawn from numbers and records handed in: training curves, confusion matrices
(``plots``) and report.html (``report``). Reads no model."""
