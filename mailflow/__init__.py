"""mailflow: a support team's customer-feedback loop over plain email."""

__version__ = "0.1.0"
