"""Where models come from: the default model shipped by a package, or a path."""
