"""Test support: the fault-injection HTTP server, the sites it serves, and a walker that checks a served site."""
