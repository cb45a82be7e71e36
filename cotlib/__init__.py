"""cotlib: reproduce 'Unveiling the Key Factors for Distilling Chain-of-Thought Reasoning'."""

__version__ = "0.1.0"
