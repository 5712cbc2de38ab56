class MetricsInputError(ValueError):
    """An input the metrics cannot use; the message names it and says what would be accepted."""
