"""The editing methods: TargetCLIP essence transfer (`targetclip`) and SAT3D attribute transfer (`sat3d`)."""
