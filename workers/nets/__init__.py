"""Networks and data: the zoo and plugins, datasets, training, measurement."""
