"""jax_instant4d.model"""
