"""Image encoders: the IR-SE backbone, e4e/pSp, inversion of photos, ArcFace, CLIP over open_clip."""
