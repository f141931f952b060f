"""Faces in photos: landmarks, FFHQ alignment and paste-back, face parsing."""
