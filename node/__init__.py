"""The node daemon. So far its configuration (`node.config`, `config.sample.json`); the chain watcher,
model manager, llama.cpp workers and HTTP API come next and build on it."""
