"""Test tooling for adapter authors: local replicas that speak a venue's wire format, fault
injection, and the conformance kit every adapter runs (see docs/adapters.md)."""
