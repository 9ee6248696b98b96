"""The node daemon: configuration (this issue), later the chain watcher, model manager and API."""
