"""Measuring edits: CLIP / identity / background scores, FID, the evaluation protocol, essence interpretation."""
