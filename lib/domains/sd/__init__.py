"""Stable Diffusion pieces: pipelines, UNet views and AIG for stock pipelines, the domain, rewards, features and
prompt sets."""
