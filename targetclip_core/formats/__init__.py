"""Reading untrusted files as data, never as code: the restricted unpickler, network pickles,
TorchScript archives, checkpoint sniffing and safe torch loading."""
