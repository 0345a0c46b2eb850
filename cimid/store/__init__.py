"""cimid store layer."""
