"""Built-in drivers, registered through the cimid entry-point group like any plugin."""
