"""Command-line options (pix2pix style): :class:`BaseOptions`, :class:`TrainOptions`, :class:`TestOptions`."""
