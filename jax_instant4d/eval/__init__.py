"""jax_instant4d.eval"""
