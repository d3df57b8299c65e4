"""Exchange adapters: the simulated exchange and live venues."""
