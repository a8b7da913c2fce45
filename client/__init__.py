"""fedrec.client."""
