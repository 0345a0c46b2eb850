"""cimid service layer."""
