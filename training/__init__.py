"""Training, cross-validation and evaluation of the LungCT classifier."""
