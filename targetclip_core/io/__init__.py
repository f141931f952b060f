"""Files in and out: atomic writes, images, the checkpoint store and its downloader."""
