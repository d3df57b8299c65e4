"""The simulated exchange: a matching engine, synthetic order flow and the adapter."""
