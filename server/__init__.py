"""fedrec.server."""
