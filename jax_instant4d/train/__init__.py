"""jax_instant4d.train"""
