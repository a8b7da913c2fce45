"""fedrec.simulations."""
