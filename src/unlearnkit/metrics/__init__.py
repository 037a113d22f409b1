"""Metrics: accuracies, membership-inference audits, and gaps to the retrained oracle."""
