"""jax_instant4d.data"""
