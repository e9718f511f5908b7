"""hostkit-echo: a tiny pass that copies its input model's files and writes a note."""
