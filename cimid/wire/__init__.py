"""cimid wire layer."""
