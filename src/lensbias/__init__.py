"""lensbias: which code and prose concepts survive model compression, and where.

Reads in the order data flows: models → compress → concepts → store → probes / saes /
geometry / behaviour → survival → report → cli.
"""

__version__ = "0.1.0"
