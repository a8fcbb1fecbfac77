"""Where workers run. Knows ranks, processes and environment; knows nothing about models."""
