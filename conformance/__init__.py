"""qtrain.conformance: judges any backend against qtrain.reference, cases as data."""
