"""TargetCLIP essence transfer: essence files, optimisation, the one-pass essence encoder and its training."""
