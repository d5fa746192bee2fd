"""jax_instant4d.export"""
