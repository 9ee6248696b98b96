"""The router and client SDK: an OpenAI-compatible gateway to the network.

chain view (chain.chainview) -> health (probes and request outcomes) -> host choice (tasks,
scoring, select) -> upstream (failover, the relay) -> wallet (the payer side of every request).
`router.gateway.Router` is the library behind both the HTTP app (router.app, `python -m router`)
and the SDK. Imports `chain`, `storage` and `protocol` only."""
