"""The router and client SDK (chain view, health, host choice, failover, payment).

Not built yet: this package holds its place in the layout; it will import `chain` and `storage`."""
