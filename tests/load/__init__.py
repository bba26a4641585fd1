"""`make load`: many simulated users through the edge for a fixed time (docs/load.md)."""
