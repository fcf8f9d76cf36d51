"""The study pipeline: command line, search spaces, objective, storage and reports. Never computes a gradient."""
