"""Generators: StyleGAN2 (FIR, hand-written backward), StyleSpace, EG3D (volume rendering,
cameras), latents, the one loading factory (`load`) and the converters of foreign layouts (`convert`)."""
