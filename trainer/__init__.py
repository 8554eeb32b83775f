"""A pipelined GNN trainer that reads features through featdb's public API."""
