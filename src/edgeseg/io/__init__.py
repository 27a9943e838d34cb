"""Files and media: atomic writes, video and camera input and output."""
