"""odeval's Hydra launcher on Ray (``hydra/launcher=ray``): see ray_launcher.py for why not hydra-ray-launcher."""
