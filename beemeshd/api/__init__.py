"""The Varlink edge: protocol server, type checks against the interface file, method handlers."""
