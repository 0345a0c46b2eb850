"""HTTP: routes, negotiation, auth, limits, error rendering."""
