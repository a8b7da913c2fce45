"""fedrec.common: data, model, metrics, privacy math and crypto helpers (client and server)."""
