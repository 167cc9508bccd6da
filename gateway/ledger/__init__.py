"""Usage and cost: tokens from bodies and streams, prices, the ledger."""
