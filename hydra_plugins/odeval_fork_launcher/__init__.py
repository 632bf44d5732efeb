"""odeval's Hydra launcher plugin (Hydra only accepts launchers from the hydra_plugins namespace)."""
