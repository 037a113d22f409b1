"""Family adapters: what the engine and the methods need to know about a kind of model."""
