"""Test support: the fault-injection HTTP server and the sites it serves (tests and bench/ import it)."""
